"""A throw-away PostgreSQL server for the suite (``make test-postgres``): the PostgreSQL 15
binaries of the machine (``/usr/lib/postgresql/15/bin``, Debian's postgresql-15), a fresh
cluster in a temporary folder, trust authentication on loopback, fsync off.

    python -m tests.pgserver run -- pytest ...   # start, run the command with
                                                 # TEST_POSTGRES_URL set, stop
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hub.broker import free_port

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    if os.geteuid() != 0:
        return args
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(args)]


def start(folder: Path, port: int | None = None) -> str:
    """Initialise and start a cluster in ``folder``; returns its SQLAlchemy URL."""
    if not (BIN / "initdb").exists():
        raise SystemExit(f"no PostgreSQL binaries in {BIN} (apt-get install postgresql-15)")
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    subprocess.run(  # noqa: S603 - fixed binaries, our own folder
        _as_postgres([str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = (
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    _options_file(folder).write_text(options)
    _pg_ctl_start(folder)
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"


def _options_file(folder: Path) -> Path:
    return folder / "pg_ctl.options"


def stop_running(mode: str = "fast") -> None:
    """Stop the server of ``TEST_POSTGRES_DIR`` (a fault scenario's database outage)."""
    folder = Path(os.environ["TEST_POSTGRES_DIR"])
    subprocess.run(  # noqa: S603
        _as_postgres([str(BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", mode, "-w", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
    )


def start_again() -> None:
    """Start the server of ``TEST_POSTGRES_DIR`` again (no-op if it runs)."""
    folder = Path(os.environ["TEST_POSTGRES_DIR"])
    if (folder / "data" / "postmaster.pid").exists():
        return
    _pg_ctl_start(folder)


def _pg_ctl_start(folder: Path) -> None:
    options = _options_file(folder).read_text()
    subprocess.run(  # noqa: S603
        _as_postgres(
            [
                str(BIN / "pg_ctl"),
                "-D",
                str(folder / "data"),
                "-l",
                str(folder / "server.log"),
                "-o",
                f"'{options}'" if os.geteuid() == 0 else options,
                "-w",
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def stop(folder: Path) -> None:
    subprocess.run(  # noqa: S603
        _as_postgres([str(BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
    )


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "run" or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="dsy-pg-"))
    try:
        url = start(folder)
        print(f"PostgreSQL for the tests: {url}", flush=True)
        env = {**os.environ, "TEST_POSTGRES_URL": url, "TEST_POSTGRES_DIR": str(folder)}
        return subprocess.run(argv[2:], env=env, check=False).returncode  # noqa: S603
    finally:
        stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
