"""The wheel is the product: build it, install it into a fresh virtual environment, and run
``serve`` and ``worker opeka`` from an empty folder outside the checkout until a referral is
delivered over SOAP to ΟΠΕΚΑ's sandbox (docs/decisions/0012). The sandboxes are not in the
wheel (decision 0014): the agency runs from the checkout, as an agency is outside the product.

Nothing of the checkout is importable by those processes: the hub's code, registry, mappings
and WSDL come only from the wheel. Its dependencies come from the development environment
(a ``.pth`` line naming its site-packages) instead of PyPI, so the test is offline and takes
seconds; ``pip check`` then proves the wheel's declared requirements are all met there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.broker import EmbeddedBroker, free_port
from hub.samples import sample_referral

REPO = Path(__file__).resolve().parents[2]
READY_S = 60.0

# Steps run in the work folder before the processes start, as an operator would: the
# migrations (package data of the wheel) first, since the ΟΠΕΚΑ worker needs the schema.
PREPARE: list[list[str]] = [["db", "upgrade"]]

pytestmark = pytest.mark.integration


def _source_copy(target: Path) -> Path:
    """The files git would commit (tracked, plus new ones not ignored): what CI builds from.
    Building a copy keeps build/ and *.egg-info out of the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # noqa: S607
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        source = REPO / raw.decode()
        if source.is_file():
            (target / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / raw.decode())
    return target


def _pip(*args: str) -> None:
    subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(wheel, venv): the wheel built from a copy of the sources, installed alone."""
    root = tmp_path_factory.mktemp("wheel")
    source = _source_copy(root / "src")
    dist = root / "dist"
    # --no-build-isolation: setuptools is pinned in the dev dependencies, so no download.
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source))
    (wheel,) = dist.glob("diasyndesi-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # noqa: S603
    python = venv / "bin" / "python"
    _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    purelib = subprocess.run(  # noqa: S603
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield wheel, venv


def test_the_wheel_carries_the_data_the_hub_reads(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for registry in ("centres", "agencies", "programmes"):
        assert f"registry/{registry}.yaml" in names
    for agency in ("opeka", "dypa", "kozani-social-grocery", "kozani-social-service"):
        assert f"mappings/{agency}.yaml" in names
    assert "connectors/benefits_agency/wsdl/opeka.wsdl" in names
    assert "schemas/json/referral-request.schema.json" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "deploy/")) for name in names)
    # the simulated agencies are development tools, not the product
    assert not [name for name in names if "/sandbox/" in name or "sandbox_kit" in name]
    assert "connectors/benefits_agency/connector.py" in names
    assert "diasyndesi_sdk/classify.py" in names


def test_the_installed_hub_reads_its_packaged_data(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = installed
    _pip("--python", str(venv / "bin" / "python"), "check")  # every declared requirement met
    probe = (
        "import json, hub.settings as s, connectors.benefits_agency.client as c; "
        "st = s.Settings(); "
        "print(json.dumps([s.__file__, str(st.registry_dir), str(st.mappings_dir), "
        "str(c.WSDL), c.WSDL.is_file(), str(st.var_dir)]))"
    )
    found = json.loads(
        subprocess.run(  # noqa: S603
            [str(venv / "bin" / "python"), "-c", probe],
            cwd=tmp_path,
            env=_clean_env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    module, registry, mappings, wsdl, wsdl_exists, var_dir = found
    for path in (module, registry, mappings, wsdl):
        assert path.startswith(str(venv)), path
    assert wsdl_exists
    assert var_dir == str(tmp_path / "var")


def test_the_installed_hub_says_the_sandboxes_are_not_in_it(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = installed
    run = subprocess.run(  # noqa: S603
        [str(venv / "bin" / "diasyndesi"), "sandbox"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "development tools, not part of this installation" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def _clean_env(**extra: str) -> dict[str, str]:
    """Only what a shell would have: nothing of the developer's hub settings leaks in."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


CHECKOUT_BIN = Path(sys.executable).parent
"""The development environment's scripts: the sandbox agencies run from here (they stand
for agencies outside the product and are not in the wheel)."""


class Process:
    def __init__(self, venv: Path, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.name = args[0]
        self.log = cwd / f"{self.name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(  # noqa: S603
                [str(venv / "bin" / "diasyndesi"), *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_for(self, line: str, timeout_s: float = READY_S) -> None:
        deadline = time.monotonic() + timeout_s
        while line not in self.log.read_text(errors="replace"):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {line!r}:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def _http(url: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def _until(check: Any, what: str, timeout_s: float = READY_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_serve_and_worker_from_the_wheel_deliver_a_referral(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = installed
    work = tmp_path / "empty"
    work.mkdir()
    broker = EmbeddedBroker(free_port())
    broker.start()
    api, benefits = free_port(), free_port()
    env = _clean_env(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        CONSUMER__SESSION_TIMEOUT_MS="6000",  # Tansu completes a join after half of it
        CONSUMER__HEARTBEAT_INTERVAL_MS="1000",
        API_PORT=str(api),
        SANDBOX_PORTS__BENEFITS_AGENCY=str(benefits),
        SANDBOX_PORTS__EMPLOYMENT_SERVICE=str(free_port()),
        SANDBOX_PORTS__SOCIAL_GROCERY=str(free_port()),
        SANDBOX_PORTS__MUNICIPAL_SOCIAL_SERVICE=str(free_port()),
        SANDBOX_DECISION_DELAY_S="0.2",
        STATUS_POLL_S="0.5",
        AGENCIES__OPEKA__BASE_URL=f"http://127.0.0.1:{benefits}/soap",
        AGENCIES__OPEKA__USERNAME="diasyndesi",
        AGENCIES__OPEKA__SECRET=uuid.uuid4().hex,
        LOG_LEVEL="WARNING",
    )
    processes: list[Process] = []
    try:
        for step in PREPARE:
            subprocess.run(  # noqa: S603
                [str(venv / "bin" / "diasyndesi"), *step], cwd=work, env=env, check=True
            )
        # the worker first: on a fresh folder it must not depend on serve having made ./var
        processes.append(worker := Process(venv, work, env, "worker", "opeka"))
        processes.append(serve := Process(venv, work, env, "serve"))
        # the agency: from the checkout (the product's wheel has no sandboxes)
        processes.append(sandbox := Process(CHECKOUT_BIN.parent, work, env, "sandbox"))
        serve.wait_for("Diasyndesi API ready")
        worker.wait_for("Diasyndesi worker ready: opeka")  # its zeep client read the WSDL
        sandbox.wait_for("sandbox agencies:")
        url = f"http://127.0.0.1:{api}"
        assert _http(f"{url}/readyz")[0] == 200

        # development mode wrote the dev credentials under ./var of the working folder
        credentials = json.loads((work / "var" / "dev-credentials.json").read_text())
        token = credentials["centres"]["KK-GREVENA"]
        status, agencies = _http(f"{url}/v1/agencies", token)
        assert status == 200
        assert "opeka" in json.dumps(agencies)  # the packaged registry

        body = sample_referral("KK-GREVENA", ["GMI"], seed=1, municipality="grevena")
        status, accepted = _http(f"{url}/v1/referrals", token, body)
        assert status == 202 and accepted["routed"] == ["opeka"], accepted

        def answered() -> dict[str, Any] | None:
            _, view = _http(f"{url}/v1/referrals/{accepted['id']}", token)
            opeka = view["agencies"][0] if view else None
            return opeka if opeka and opeka["status"] else None

        opeka = _until(answered, "ΟΠΕΚΑ's answer")
        assert opeka["delivery"] == "delivered"
        assert opeka["reference"]  # ΟΠΕΚΑ's protocol number, from the SOAP answer
    finally:
        for process in reversed(processes):
            process.stop()
        broker.stop()
