"""The hub as production runs it: one external broker, ``diasyndesi serve`` (API, relay,
projector), any number of ``diasyndesi worker`` processes sharing the connectors' consumer
groups, and ``diasyndesi sandbox`` for the agencies, each its own process with its own logs.

``SplitHub`` offers what ``Client`` and ``check`` need from ``HubProcess`` (``api_url``,
``ports``, ``credentials()``, ``log_dir``, ``stderr_lines()``), so scenarios reconcile it the
same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from hub.registry import Registry
from hub.sandboxes import agency_env, sandbox_families
from hub.settings import Settings, packaged_dir
from tests.databases import POSTGRES, fresh_database_url
from tests.faults.harness import DIASYNDESI, ROOT, Ports, ReplacementBroker, pid_alive

AGENCY_IDS = tuple(a.id for a in Registry.load(packaged_dir("registry")).active_agencies)


class Service:
    """One ``diasyndesi <args>`` process in its own session; ready when ``ready_line`` is
    printed. Each start writes ``<name>-<n>.stdout.log`` and ``.stderr.log``."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, ready_line: str
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_dir = log_dir
        self.ready_line = ready_line
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.ready_s = 0.0

    def log(self, stream: str, generation: int | None = None) -> Path:
        return self.log_dir / f"{self.name}-{generation or self.generation}.{stream}.log"

    def start(self, timeout_s: float = 60.0) -> float:
        """Start and wait for the ready line; returns seconds to ready."""
        assert not self.running, f"{self.name} already running"
        self.generation += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log("stdout").open("wb") as out, self.log("stderr").open("wb") as err:
            self.process = subprocess.Popen(  # noqa: S603 - our own console script
                [str(DIASYNDESI), *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        while self.ready_line not in self.log("stdout").read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            if time.monotonic() - started > timeout_s:
                self.kill()
                raise RuntimeError(f"{self.name} not ready in {timeout_s} s:\n{self.tail()}")
            time.sleep(0.05)
        self.ready_s = time.monotonic() - started
        return self.ready_s

    def tail(self, lines: int = 30) -> str:
        text = ""
        for stream in ("stdout", "stderr"):
            path = self.log(stream)
            if path.exists():
                text += f"--- {path.name}\n"
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """``kill -9`` of the process group: no shutdown code runs, no offsets are committed."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a graceful leave: drain, commit, leave the group); SIGKILL if it hangs."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


class SplitHub:
    """External broker + serve + sandbox + workers on one VAR_DIR (shared SQLite file)."""

    def __init__(self, var_dir: Path, ports: Ports, log_dir: Path, serves: int = 1) -> None:
        self.var_dir = var_dir
        self.ports = ports
        self.log_dir = log_dir
        # PostgreSQL under `make test-postgres`, else the shared SQLite file under VAR_DIR.
        self.database_url = fresh_database_url(var_dir) if POSTGRES else ""
        self.broker = ReplacementBroker(ports.broker)
        # What the README's walkthrough has the operator export, made once for every
        # process: secrets, URLs, certificate paths (as `up` makes them, hub/sandboxes.py).
        settings = Settings(var_dir=var_dir, sandbox_port_base=0)
        self.agency_env = agency_env(settings, sandbox_families(settings), ports.by_family())
        self.serve = Service("serve", ["serve"], self.env(), log_dir, "Diasyndesi API ready")
        self.serves = [self.serve]
        if serves > 1:
            assert serves == 2 and ports.api2, "a second serve needs Ports.api2"
            env = {**self.env(), "API_PORT": str(ports.api2)}
            self.serves.append(Service("serve2", ["serve"], env, log_dir, "Diasyndesi API ready"))
        self.sandbox = Service("sandbox", ["sandbox"], self.env(), log_dir, "sandbox agencies:")
        self.workers: list[Service] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AGENCIES__", "KAFKA_", "SANDBOX_", "DATABASE_URL", "CONSUMER__"))
        }
        env.update(
            VAR_DIR=str(self.var_dir),
            API_PORT=str(self.ports.api),
            KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{self.ports.broker}",
            # Tansu completes a join after half the session timeout (measured): keep it short
            CONSUMER__SESSION_TIMEOUT_MS="6000",
            CONSUMER__HEARTBEAT_INTERVAL_MS="1000",
            STATUS_POLL_S="2",
            OBSERVABILITY_PORT="0",  # several workers on one machine: each its own free port
            **self.ports.env(),
            SANDBOX_DECISION_DELAY_S="0.5",
            SANDBOX_OPTIONS__SOCIAL_GROCERY__CAPACITY="100000",
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env.update(self.agency_env)
        return env

    def start(self, workers: int = 1) -> None:
        """Broker, then serve (writes the dev credentials), then the sandboxes (which need
        the agencies' tokens to push statuses), then the workers."""
        self.broker.start()
        for serve in self.serves:
            serve.start()
        self.sandbox.start()
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> Service:
        worker = Service(
            f"worker{len(self.workers) + 1}",
            ["worker", *AGENCY_IDS],
            self.env(),
            self.log_dir,
            "Diasyndesi worker ready",
        )
        self.workers.append(worker)
        worker.start()
        return worker

    def stop(self) -> None:
        for service in (*self.workers, *self.serves, self.sandbox):
            service.terminate(timeout_s=20)
        self.broker.stop()

    def credentials(self) -> dict[str, dict[str, str]]:
        creds: dict[str, dict[str, str]] = json.loads(
            (self.var_dir / "dev-credentials.json").read_text()
        )
        return creds

    def stderr_lines(self, *needles: str) -> list[str]:
        found = []
        for service in (*self.serves, self.sandbox, *self.workers):
            for generation in range(1, service.generation + 1):
                path = service.log("stderr", generation)
                if path.exists():
                    for line in path.read_text(errors="replace").splitlines():
                        if any(n in line for n in needles):
                            found.append(f"[{path.name}] {line}")
        return found

    def alive(self) -> list[str]:
        return [s.name for s in (*self.serves, self.sandbox, *self.workers) if pid_alive(s.pid)]
