"""``diasyndesi up``: production in miniature, as a supervised process tree.

The same processes production runs, on embedded defaults, each its own child of ``up``:

    up ─┬─ broker     Tansu, memory only, on EMBEDDED_BROKER_PORT (19092)
        ├─ serve      API (API_PORT, 8000), relay, projector; SQLite under VAR_DIR
        ├─ worker-1   the connectors (UP_WORKERS processes share the agencies out), each
        │             with /metrics, /healthz, /readyz on a port of its own
        └─ sandbox    the simulated agencies, one server per family (SANDBOX_PORT_BASE, 8101…)

``up`` first prepares what the children share (the database schema and the development
credentials in ``VAR_DIR/dev-credentials.json``), then generates what the split walkthrough
in the README asks an operator to export (agency secrets shared by the sandbox and the
workers, the agencies' URLs, the broker's address) and passes it in each child's
environment; what the operator did set wins. It waits until serve and every worker answer
``/readyz`` and the sandbox listens, then prints the banner. Children are restarted when
they die (``hub/process_tree.py``); Ctrl+C stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hub.broker import broker_command, free_port, port_open
from hub.logs import get_logger
from hub.process_tree import ChildSpec, Probe, ProcessTree
from hub.settings import Settings

log = get_logger(__name__)

READY_TIMEOUT_S = 90.0


async def http_status(host: str, port: int, path: str, timeout_s: float = 2.0) -> int:
    """The status code of ``GET path`` (0 when nothing answers): ``up`` needs no HTTP client."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except (OSError, TimeoutError):
        return 0
    finally:
        writer.close()


def reachable(host: str) -> str:
    """Where to connect to a server listening on ``host`` (any address: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared only


def ready_at(host: str, port: int) -> Probe:
    """A child is ready when its ``/readyz`` answers 200."""

    async def probe() -> bool:
        return await http_status(host, port, "/readyz") == 200

    return probe


def _command() -> list[str]:
    """How to run ``diasyndesi``: the console script next to this interpreter, so ``ps``
    shows ``diasyndesi serve``; ``python -m hub`` where there is none."""
    script = Path(sys.executable).with_name("diasyndesi")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hub"]


@dataclass
class Plan:
    """Ports, environment and agencies of one ``up``, decided before anything starts."""

    settings: Settings
    broker_port: int
    api_port: int
    sandbox_ports: dict[str, int]
    workers: list[tuple[str, int, list[str]]]  # (name, observability port, agencies)
    env: dict[str, str]

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def api_url(self) -> str:
        return self.settings.public_url or f"http://{self.settings.api_host}:{self.api_port}"

    @property
    def credentials_path(self) -> Path:
        return self.settings.var_dir / "dev-credentials.json"


def plan(settings: Settings, agencies: list[str]) -> Plan:
    """Resolve ports (0 = a free one now) and build the children's shared environment."""
    from hub.sandboxes import agency_env, port_env, sandbox_families, sandbox_port

    families = sandbox_families(settings)
    ports = {family.name: sandbox_port(settings, family) or free_port() for family in families}
    broker = settings.embedded_broker_port or free_port()
    api = settings.api_port or free_port(settings.api_host)
    count = min(settings.up_workers, len(agencies)) or 1
    workers = [
        (f"worker-{n + 1}", free_port(settings.observability_host), agencies[n::count])
        for n in range(count)
    ]
    env = dict(os.environ)
    # Fewer glibc malloc arenas: the children's threads (SQLite, DNS) otherwise each grow
    # an arena of their own; measured ~10% of the tree's memory.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.update(
        VAR_DIR=str(settings.var_dir.resolve()),
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{broker}",
        API_PORT=str(api),
        PYTHONUNBUFFERED="1",
        **port_env(ports),
    )
    if "session_timeout_ms" not in settings.consumer.model_fields_set:
        # Tansu finishes a group join after half the session timeout: keep it short here.
        env.update(CONSUMER__SESSION_TIMEOUT_MS="4000", CONSUMER__HEARTBEAT_INTERVAL_MS="1000")
    if "status_poll_s" not in settings.model_fields_set:
        env["STATUS_POLL_S"] = "2"  # the sandboxes are local
    env.update(agency_env(settings, families, ports))
    return Plan(settings, broker, api, ports, workers, env)


async def prepare_apart(settings: Settings) -> None:
    """``prepare`` in a short-lived forked child: the migrations and the certificates need
    SQLAlchemy, Alembic and trustme (~50 MB), which the supervisor, alive as long as the tree,
    should not keep. A refusal comes back as the same error."""
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, _prepare_in_child, settings)


def _prepare_in_child(settings: Settings) -> None:
    from hub.sandboxes import sandbox_families, state_dir

    asyncio.run(prepare(settings))
    for family in sandbox_families(settings):
        family.sandbox.prepare(state_dir(settings, family))


async def prepare(settings: Settings) -> None:
    """What must exist before the children start, done once, here: the database schema (the
    migrations, as ``diasyndesi db upgrade`` runs them) and the development credentials (the
    sandbox reads the agencies' tokens at start)."""
    from hub.auth import ensure_dev_credentials
    from hub.db import Database
    from hub.registry import Registry
    from hub.schema import upgrade

    settings.var_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database)
    try:
        await upgrade(db)
        path = settings.var_dir / "dev-credentials.json"
        await ensure_dev_credentials(db, Registry.load(settings.registry_dir), path)
    finally:
        await db.dispose()


def children(p: Plan) -> list[ChildSpec]:
    """The children of the tree (``bring_up`` decides when each starts)."""
    diasyndesi = _command()
    host = p.host

    async def broker_ready() -> bool:
        return port_open(host, p.broker_port)

    async def sandbox_ready() -> bool:
        sandbox = reachable(p.settings.sandbox_host)
        return all(port_open(sandbox, port) for port in p.sandbox_ports.values())

    specs = [
        ChildSpec(
            "broker",
            broker_command(host, p.broker_port),
            p.env,
            broker_ready,
            restart=p.settings.up_restart_broker,
            last=True,
        ),
        ChildSpec(
            "serve",
            [*diasyndesi, "serve"],
            p.env,
            ready_at(reachable(p.settings.api_host), p.api_port),
        ),
    ]
    for name, port, agencies in p.workers:
        env = {**p.env, "OBSERVABILITY_PORT": str(port)}
        specs.append(
            ChildSpec(
                name,
                [*diasyndesi, "worker", *agencies],
                env,
                ready_at(reachable(p.settings.observability_host), port),
                restart_with="broker",
            )
        )
    specs.append(ChildSpec("sandbox", [*diasyndesi, "sandbox"], p.env, sandbox_ready))
    return specs


def banner(p: Plan, tree: ProcessTree, elapsed: float) -> str:
    url = p.api_url
    credentials = p.credentials_path
    workers = {name: (port, agencies) for name, port, agencies in p.workers}
    lines = []
    for child in tree.children.values():
        line = f"    {child.name:<9} pid {child.pid}"
        if child.name in workers:
            port, agencies = workers[child.name]
            line += f"  {', '.join(agencies)}  (metrics http://127.0.0.1:{port}/metrics)"
        lines.append(line)
    listing = "\n".join(lines)
    return f"""
Diasyndesi is ready in {elapsed:.1f} s (serve and workers ready, consumers joined)
  API and docs : {url}  ({url}/docs)
  health       : {url}/readyz   metrics: {url}/metrics
  credentials  : {credentials}
  processes    :
{listing}
Try it:
  .venv/bin/diasyndesi demo       # submits sample referrals and shows them propagate
  TOKEN=$(python3 -c 'import json;print(json.load(open("{credentials}"))["centres"]["KK-KOZANI"])')
  curl -s {url}/v1/agencies -H "Authorization: Bearer $TOKEN"
  (README.md has the whole curl walkthrough: submit, read back, agency status.)
Press Ctrl+C to stop.
"""


async def bring_up(tree: ProcessTree, p: Plan) -> None:
    """The broker first (every other child connects to it); then serve and the workers; the
    sandbox once those answer /healthz, so that it imports while they wait for their group
    joins (on two cores three imports at once slowed every one); then wait for all."""
    specs = {spec.name: spec for spec in children(p)}
    tree.start(specs.pop("broker"))
    await tree.wait_ready(["broker"], 10.0)
    sandbox = specs.pop("sandbox")
    for spec in specs.values():
        tree.start(spec)
    host = reachable(p.settings.api_host)
    probes = [(host, p.api_port)] + [
        (reachable(p.settings.observability_host), port) for _, port, _ in p.workers
    ]
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:  # best effort: start the sandbox regardless after it
        answers = [await http_status(h, port, "/healthz") for h, port in probes]
        if all(answer == 200 for answer in answers):
            break
        await asyncio.sleep(0.1)
    tree.start(sandbox)
    await tree.wait_ready([*specs, sandbox.name], READY_TIMEOUT_S)


async def run_up(
    settings: Settings, agencies: list[str], say: Callable[[str], object] = print
) -> None:
    """Start the tree, print the banner when ready, run until SIGINT/SIGTERM, stop it all.
    A second signal while stopping kills every child at once."""
    started = time.perf_counter()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            tree.kill()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    tree = ProcessTree(initial_s=settings.task_restart_initial_s, max_s=settings.task_restart_max_s)
    await prepare_apart(settings)
    p = plan(settings, agencies)
    try:
        bringing_up = asyncio.ensure_future(bring_up(tree, p))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({bringing_up, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if bringing_up.done():
            stopped.cancel()
            bringing_up.result()  # raises if not ready in time
            say(banner(p, tree, time.perf_counter() - started))
            await stop.wait()
        else:
            bringing_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bringing_up
    finally:
        say("stopping…")
        await tree.stop()
