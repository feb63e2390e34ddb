"""``diasyndesi bench``: the hub as ``make run`` starts it, against a bare baseline measured
in the same run.

- **Hub**: ``diasyndesi up`` in a child process tree (own VAR_DIR, own ports), the sandboxes
  pushing statuses as they do by default. Four-agency referrals (KK-KOZANI: GMI +
  UNEMPLOYMENT_REGISTRATION + SOCIAL_GROCERY + HELP_AT_HOME). A referral is done when the
  four ``delivery.succeeded`` outcomes are on ``kk.deliveries.v1`` (read from Kafka, the
  integration surface, rather than by polling the API, which would load what it measures);
  afterwards the read model must show every pair delivered.
  * closed loop: ``--in-flight`` referrals at a time for ``--duration`` s → referrals/s;
  * open loop: ``--rate`` referrals/s → POST p50/p99, and created_at → last delivered_at
    (read model) p50/p99;
  * ready time of ``up`` and the RSS of its whole process tree.
- **Bare** (``hub/bench_bare.py``): producer → one consumer group per agency → the same
  connector classes and mappings → the same sandboxes, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from diasyndesi_sdk.connector import KEEPALIVE_S
from hub.bench_bare import (
    FOUR,
    READY_LINE,
    BareDriver,
    Completions,
    TopicTail,
    closed_loop,
    open_loop,
)
from hub.broker import EmbeddedBroker, free_port
from hub.errors import DiasyndesiError
from hub.events import PoisonRecord, decode
from hub.registry import Registry
from hub.samples import sample_referral
from hub.settings import Settings
from schemas.events import TOPIC_DELIVERIES, DeliveryOutcome

AGENCIES = ["opeka", "dypa", "kozani-social-grocery", "kozani-social-service"]
BIN = Path(sys.executable).parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:7.0f}" if values else "      —"


def tree_rss_mb(root: int) -> tuple[float, dict[str, float]]:
    """Resident memory of ``root`` and every descendant (from /proc): the total, and per
    process by its command (``up``, ``serve``, ``worker``, ``sandbox``, ``tansu``…)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total_kb, stack = 0, [root]
    per_process: dict[str, float] = {}
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                kb = int(line.split()[1])
                total_kb += kb
                name = _process_name([a.decode(errors="replace") for a in argv if a])
                per_process[name] = per_process.get(name, 0.0) + kb / 1024
    return total_kb / 1024, per_process


def tree_cpu_s(root: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by ``root`` and its descendants, per process
    name: differences of two readings say where a phase's CPU went, a figure far less
    disturbed by other work on the machine than throughput."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    used: dict[str, float] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        stat = stats.get(pid)
        if stat is None:
            continue
        name = _process_name([a.decode(errors="replace") for a in argv if a])
        used[name] = used.get(name, 0.0) + (int(stat[11]) + int(stat[12])) / ticks
    return used


def _process_name(argv: list[str]) -> str:
    """``diasyndesi worker`` → "worker"; the broker by its program's name."""
    for index, arg in enumerate(argv):
        if Path(arg).name == "diasyndesi" and index + 1 < len(argv):
            return argv[index + 1]
    return Path(argv[0]).name if argv else "?"


@dataclass
class Figures:
    name: str
    closed: tuple[int, float, list[float]] = (0, 1.0, [])
    posts: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    ready_s: float | None = None
    rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.closed[0] / self.closed[1]


class Child:
    """A child process in its own session, its output in ``log``, ready on a line."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own commands
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def ready(self, line: str, timeout_s: float = 90.0) -> float:
        started = time.perf_counter()
        while line not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.perf_counter() - started > timeout_s:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise DiasyndesiError(f"{self.process.args!r} not ready:\n{tail}")
            await asyncio.sleep(0.02)
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(2)  # SIGINT, as Ctrl+C
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def base_env(var_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENCIES__", "KAFKA_", "SANDBOX_", "DATABASE_URL", "API_", "VAR_"))
    }
    env.update(
        VAR_DIR=str(var_dir),
        API_PORT=str(free_port()),
        EMBEDDED_BROKER_PORT=str(free_port()),
        SANDBOX_PORT_BASE="0",  # free ports (sandbox_connections fixes them for the bare run)
        SANDBOX_OPTIONS__SOCIAL_GROCERY__CAPACITY="1000000",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


def sandbox_connections(env: dict[str, str]) -> dict[str, str]:
    """Ports, shared agency secrets and URLs, so a sandbox and a worker started apart agree
    (what ``up`` gives its children, hub/sandboxes.py)."""
    from hub.sandboxes import agency_env, port_env, sandbox_families

    settings = Settings(var_dir=Path(env["VAR_DIR"]), sandbox_port_base=0)
    families = sandbox_families(settings)
    ports = {family.name: free_port() for family in families}
    return {**port_env(ports), **agency_env(settings, families, ports)}


async def measure(
    figures: Figures,
    one: Callable[[int], Coroutine[Any, Any, tuple[float, float]]],
    in_flight: int,
    rate: float,
    duration_s: float,
    tree_root: int | None = None,
) -> list[tuple[float, float]]:
    """``tree_root``: also note the CPU milliseconds per referral each process of that
    tree used during the closed loop."""
    await closed_loop(one, 8, 3.0)  # warm-up: pools, caches, consumer fetches
    print(f"{figures.name}: {in_flight} in flight for {duration_s:g} s", file=sys.stderr)
    before = tree_cpu_s(tree_root) if tree_root is not None else {}
    figures.closed = await closed_loop(one, in_flight, duration_s)
    if tree_root is not None and figures.closed[0]:
        after = tree_cpu_s(tree_root)
        per_referral = {
            name: (after[name] - before.get(name, 0.0)) * 1000 / figures.closed[0] for name in after
        }
        figures.notes.append(
            f"{figures.name.split(':')[0]}: CPU ms per referral at {in_flight} in flight: "
            + ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(per_referral.items()))
            + f"; total without the load driver (bench) "
            f"{sum(ms for name, ms in per_referral.items() if name != 'bench'):.1f}"
        )
    print(f"{figures.name}: {rate:g}/s for {duration_s:g} s", file=sys.stderr)
    opened = await open_loop(one, rate, duration_s)
    figures.posts = [post for post, _ in opened]
    return opened


async def run_bare(in_flight: int, rate: float, duration_s: float, folder: Path) -> Figures:
    figures = Figures("bare: producer → consumer groups → connectors → sandboxes")
    env = base_env(folder / "bare")
    env.update(sandbox_connections(env))
    broker = EmbeddedBroker(int(env["EMBEDDED_BROKER_PORT"]))
    await broker.astart()
    sandbox = Child(
        [str(BIN / "diasyndesi"), "sandbox", "--no-status-push"], env, folder / "bare-sandbox.log"
    )
    worker = Child(
        [str(BIN / "python"), "-m", "hub.bench_bare", broker.bootstrap_servers, *AGENCIES],
        env,
        folder / "bare-worker.log",
    )
    driver = BareDriver(broker.bootstrap_servers, Registry.load(Settings().registry_dir))
    try:
        await driver.start(partitions=4)
        await sandbox.ready("sandbox agencies:")
        await worker.ready(READY_LINE)
        opened = await measure(
            figures, driver.referral, in_flight, rate, duration_s, tree_root=os.getpid()
        )
        figures.e2e = [done for _, done in opened]
    finally:
        await driver.stop()
        worker.stop()
        sandbox.stop()
        await broker.astop()
    return figures


class HubDriver:
    """POSTs four-agency referrals; a referral is done when its four successful outcomes
    are on ``kk.deliveries.v1``."""

    def __init__(self, url: str, token: str, bootstrap: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S, limit=0),
        )
        self.completions = Completions()
        self.tail = TopicTail(bootstrap, TOPIC_DELIVERIES, self._on_outcome)
        self.ids: list[str] = []

    async def start(self) -> None:
        await self.tail.start(partitions=4)

    async def stop(self) -> None:
        await self.tail.stop()
        await self.session.close()

    def _on_outcome(self, record: Any, now: float) -> None:
        try:
            data = decode(record.headers, record.key, record.value).data
        except PoisonRecord:
            return
        if isinstance(data, DeliveryOutcome) and data.succeeded:
            self.completions.done(data.referral_id, data.agency, now)

    async def referral(self, seed: int) -> tuple[float, float]:
        body = sample_referral(seed=seed, programmes=FOUR)
        started = time.perf_counter()
        async with self.session.post(
            f"{self.url}/v1/referrals", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
        ) as response:
            if response.status != 202:
                raise DiasyndesiError(f"submit refused: {response.status} {await response.text()}")
            answer = await response.json()
        posted = time.perf_counter()
        future = self.completions.expect(answer["id"], answer["routed"])
        self.ids.append(answer["id"])
        done = await asyncio.wait_for(future, 120)
        return posted - started, done - started

    async def read_model(self, ids: list[str], timeout_s: float = 180.0) -> list[float]:
        """created_at → last delivered_at of each referral, once the read model shows every
        pair delivered (the projector may still be catching up); fails after ``timeout_s``."""
        limit = asyncio.Semaphore(16)
        deadline = time.perf_counter() + timeout_s

        async def one(referral_id: str) -> float:
            while True:
                async with limit, self.session.get(f"{self.url}/v1/referrals/{referral_id}") as r:
                    view = await r.json()
                if all(a["delivery"] == "delivered" for a in view["agencies"]):
                    break
                if time.perf_counter() > deadline:
                    raise DiasyndesiError(f"referral {referral_id} not delivered: {view}")
                await asyncio.sleep(0.5)
            last = max(datetime.fromisoformat(a["delivered_at"]) for a in view["agencies"])
            return (last - datetime.fromisoformat(view["created_at"])).total_seconds()

        return list(await asyncio.gather(*(one(i) for i in ids)))


@asynccontextmanager
async def running_up(folder: Path) -> AsyncIterator[tuple[Child, dict[str, str], float]]:
    env = base_env(folder / "hub")
    started = time.perf_counter()
    up = Child([str(BIN / "diasyndesi"), "up"], env, folder / "up.log")
    try:
        await up.ready("Diasyndesi is ready")
        yield up, env, time.perf_counter() - started
    finally:
        up.stop()


async def run_hub(in_flight: int, rate: float, duration_s: float, folder: Path) -> Figures:
    figures = Figures("hub: `make run` (diasyndesi up)")
    async with running_up(folder) as (up, env, ready_s):
        figures.ready_s = ready_s
        creds = json.loads((Path(env["VAR_DIR"]) / "dev-credentials.json").read_text())
        driver = HubDriver(
            f"http://127.0.0.1:{env['API_PORT']}",
            creds["centres"]["KK-KOZANI"],
            f"127.0.0.1:{env['EMBEDDED_BROKER_PORT']}",
        )
        try:
            await driver.start()
            await measure(
                figures, driver.referral, in_flight, rate, duration_s, tree_root=up.process.pid
            )
            loaded = time.perf_counter()
            figures.rss_mb, per_process = tree_rss_mb(up.process.pid)
            figures.notes.append(
                "hub: RSS after the load, MB: "
                + ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(per_process.items()))
            )
            opened_ids = driver.ids[-int(rate * duration_s) :]
            figures.e2e = await driver.read_model(opened_ids)
            await driver.read_model(driver.ids)  # every pair of every phase, in the read model
            figures.notes.append(
                f"hub: {len(driver.ids)} referrals, every pair delivered in the read model "
                f"{time.perf_counter() - loaded:.1f} s after the load ended"
            )
        finally:
            await driver.stop()
    return figures


def report(bare: Figures | None, hub: Figures, in_flight: int, rate: float) -> str:
    rows = [
        f"{'':44}{'ref/s':>8}{'POST p50':>10}{'POST p99':>10}{'e2e p50':>9}{'e2e p99':>9}"
        f"{'ready':>7}{'RSS MB':>8}",
    ]
    for f in [x for x in (bare, hub) if x is not None]:
        ready = f"{f.ready_s:6.1f}s" if f.ready_s is not None else "      —"
        rss = f"{f.rss_mb:8.0f}" if f.rss_mb is not None else "       —"
        rows.append(
            f"{f.name[:43]:44}{f.per_s:8.1f}{ms(f.posts, 0.5):>10}{ms(f.posts, 0.99):>10}"
            f"{ms(f.e2e, 0.5):>9}{ms(f.e2e, 0.99):>9}{ready}{rss}"
        )
    rows.append(
        f"(ref/s: {in_flight} four-agency referrals in flight, closed loop; POST and e2e: "
        f"open loop at {rate:g}/s; e2e: created_at → last delivered_at, hub from its read "
        "model, bare from the connectors' done records; ms)"
    )
    if bare is not None:
        ratio = hub.per_s / bare.per_s
        e2e = statistics.median(hub.e2e) / statistics.median(bare.e2e)
        rows.append(
            f"hub/bare throughput ratio: {ratio:.2f} (goal ≥ 0.5); e2e median hub/bare: {e2e:.1f}x"
        )
    rows.extend(bare.notes if bare is not None else [])
    rows.extend(hub.notes)
    return "\n".join(rows)


async def run_bench(in_flight: int, rate: float, duration_s: float, bare: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="diasyndesi-bench-") as tmp:
        folder = Path(tmp)
        baseline = await run_bare(in_flight, rate, duration_s, folder) if bare else None
        hub = await run_hub(in_flight, rate, duration_s, folder)
    print(report(baseline, hub, in_flight, rate))
