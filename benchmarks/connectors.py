"""How many deliveries per second does each connector get through to its sandbox?

Starts the four sandbox agencies (``hub.sandboxes.start_sandboxes``, fresh secrets, no hub
to push status to, decisions an hour away) in a separate process, so client and servers do
not share one event loop. Builds each connector exactly as the hub does (``build_connector``
from the registry and a ``Settings`` holding the sandboxes' connections) and delivers
``--count`` distinct referrals, mapped by the agency's real mapping, with ``--concurrency``
in flight (an ``asyncio.Semaphore``, as the connector runner), each with its own idempotency
key; a delivery failing with a connection error is retried with the same key, as the hub
would, and counted (see ``Retries``). Payloads are built before the clock starts: this
measures the connector and the sandbox, not the mapping.

Baseline, measured in the same run and interleaved with the connectors: a bare aiohttp
``GET /_sandbox/stats`` on the ΔΥΠΑ sandbox at the same concurrency (same process, same
uvicorn + FastAPI stack, no protocol, no agency work). A connector's ratio to it is the cost
of its protocol (SOAP/WS-Security, OAuth2, API key, HMAC-signed webhooks) plus the
sandbox's own work (validation, ledger, state file).

Each of ``--runs`` rounds measures every target once, in turn; the table shows the median
and min–max of the rounds. Afterwards each sandbox's ``/_sandbox/stats`` must show every
delivery accepted once and no more duplicates than retries.

Usage: ``.venv/bin/python benchmarks/connectors.py [--count 1000] [--runs 3]
[--concurrency 32] [--no-serial]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diasyndesi_sdk.connector import Connector, Delivery, idempotency_key  # noqa: E402
from hub.errors import RetryableError  # noqa: E402
from hub.factory import build_connector  # noqa: E402
from hub.logs import configure_logging  # noqa: E402
from hub.mapping_policy import load_mappings  # noqa: E402
from hub.registry import Registry  # noqa: E402
from hub.samples import sample_referral  # noqa: E402
from hub.settings import AgencyConnection, Settings  # noqa: E402
from schemas.codes import ProgrammeCode  # noqa: E402
from schemas.referral import Referral  # noqa: E402

AGENCIES = ["opeka", "dypa", "kozani-social-grocery", "kozani-social-service"]
# One programme per agency family, so every referral is routed to all four agencies.
PROGRAMMES = ["GMI", "UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY", "HELP_AT_HOME"]
BASELINE = "baseline: GET /_sandbox/stats"
WARM_UP = 50

SERVER = """
import asyncio, json, os, sys
from pathlib import Path
from hub.logs import configure_logging
from hub.sandboxes import start_sandboxes
from hub.settings import Settings

async def main():
    configure_logging("WARNING")
    tmp = Path(sys.argv[1])
    settings = Settings(
        var_dir=tmp, sandbox_port_base=0,
        sandbox_decision_delay_s=3600, log_level="WARNING",
    )
    sandboxes = await start_sandboxes(settings, hub_url=None, agency_tokens={})
    ready = {
        "servers": {name: server.url for name, server in sandboxes.servers.items()},
        "connections": {
            agency: {**c.model_dump(exclude={"secret"}), "secret": c.secret.get_secret_value()}
            for agency, c in sandboxes.connections.items()
        },
    }
    (tmp / "ready.tmp").write_text(json.dumps(ready), encoding="utf-8")
    os.replace(tmp / "ready.tmp", tmp / "ready.json")
    try:
        await asyncio.Event().wait()
    finally:
        await sandboxes.stop()

asyncio.run(main())
"""


def start_sandbox_process(tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the sandboxes in their own interpreter and wait for their URLs and secrets."""
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", SERVER, str(tmp)], cwd=ROOT
    )
    ready = tmp / "ready.json"
    deadline = time.monotonic() + 60
    while not ready.exists():
        if server.poll() is not None:
            raise SystemExit(f"sandbox process exited with {server.returncode}")
        if time.monotonic() > deadline:
            server.terminate()
            server.wait(5)
            raise SystemExit("sandbox process did not start within 60 s")
        time.sleep(0.05)
    return server, json.loads(ready.read_text(encoding="utf-8"))


def stop_sandbox_process(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


class Payloads:
    """Distinct canonical referrals, each mapped once per agency, built ahead of time."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.mappings = load_mappings(settings, registry)
        self.routed = registry.route("KK-KOZANI", [ProgrammeCode(p) for p in PROGRAMMES])
        missing = set(AGENCIES) - set(self.routed)
        if missing:
            raise SystemExit(f"sample referral is not routed to {sorted(missing)}")
        self._seed = 0

    def take(self, agency: str, count: int) -> list[Delivery]:
        deliveries = []
        for _ in range(count):
            self._seed += 1
            referral = Referral(
                **sample_referral(programmes=PROGRAMMES, seed=self._seed),
                id=str(uuid4()),
                created_at=datetime.now(UTC),
                municipality="kozani",
                routed=self.routed,
            )
            event_id = str(uuid4())
            deliveries.append(
                Delivery(
                    event_id=event_id,
                    referral_id=referral.id,
                    agency=agency,
                    idempotency_key=idempotency_key(event_id, agency),
                    payload=self.mappings[agency].apply(referral.model_dump(mode="json")),
                )
            )
        return deliveries


class Retries:
    """Calls retried after a connection error, per target, with the error that caused it.

    The sandboxes' uvicorn closes a keep-alive connection after 5 s idle; aiohttp keeps it
    pooled for 15 s and hands pooled connections out first-in first-out. A connector left
    idle about 5 s while the others were measured can therefore pick connections the server
    is closing at that very moment (ServerDisconnectedError, ECONNRESET), several in a row.
    The hub retries such a delivery with the same idempotency key after a back-off; so does
    this benchmark (``ATTEMPTS``, from 0.2 s doubling, as ``RetrySettings``), and counts it.
    """

    ATTEMPTS = 5
    INITIAL_S = 0.2

    def __init__(self) -> None:
        self.seen: dict[str, Counter[str]] = {}

    def wrap(self, name: str, call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def retrying() -> Any:
            for attempt in range(1, self.ATTEMPTS + 1):
                try:
                    return await call()
                except (RetryableError, aiohttp.ClientError) as exc:
                    if attempt == self.ATTEMPTS:
                        raise
                    cause = exc
                    while cause.__cause__ is not None:
                        cause = cause.__cause__
                    self.seen.setdefault(name, Counter())[f"{type(cause).__name__}: {cause}"] += 1
                    await asyncio.sleep(self.INITIAL_S * 2 ** (attempt - 1))
            raise AssertionError("unreachable")

        return retrying

    def count(self, name: str) -> int:
        return sum(self.seen.get(name, Counter()).values())


async def timed(calls: list[Callable[[], Awaitable[Any]]], concurrency: int) -> float:
    """Run every call with at most ``concurrency`` in flight; return calls per second."""
    limit = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[Any]]) -> None:
        async with limit:
            await call()

    started = time.perf_counter()
    results = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
    elapsed = time.perf_counter() - started
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise SystemExit(f"{len(failures)} of {len(calls)} calls failed, first: {failures[0]!r}")
    return len(calls) / elapsed


def stats_url(agency: str, ready: dict[str, Any]) -> str:
    if agency == "opeka":  # base_url is the SOAP endpoint, {server}/soap
        return f"{ready['servers']['opeka']}/_sandbox/stats"
    return f"{ready['connections'][agency]['base_url']}/_sandbox/stats"


async def measure(
    ready: dict[str, Any], count: int, runs: int, levels: list[int]
) -> dict[int, dict[str, list[float]]]:
    connections = {a: AgencyConnection(**c) for a, c in ready["connections"].items()}
    settings = Settings(agencies=connections, log_level="WARNING")
    registry = Registry.load(settings.registry_dir)
    payloads = Payloads(settings, registry)
    connectors: dict[str, Connector] = {
        agency: build_connector(registry.agencies[agency], settings) for agency in AGENCIES
    }
    delivered = dict.fromkeys(AGENCIES, 0)
    baseline_url = stats_url("dypa", ready)
    rates: dict[int, dict[str, list[float]]] = {
        level: {name: [] for name in [BASELINE, *AGENCIES]} for level in levels
    }
    retries = Retries()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def get_stats() -> None:
        async with session.get(baseline_url) as response:
            response.raise_for_status()
            await response.read()

    probe = retries.wrap(BASELINE, get_stats)

    def deliveries(agency: str, connector: Connector, count: int) -> list[Callable[[], Any]]:
        batch = payloads.take(agency, count)  # built before the clock starts
        return [retries.wrap(agency, lambda d=d: connector.deliver(d)) for d in batch]

    started: list[Connector] = []
    try:
        for connector in connectors.values():
            await connector.start()
            started.append(connector)
        # warm up: connections, token, WSDL caches, first-request paths on both sides
        await timed([probe] * WARM_UP, max(levels))
        for agency, connector in connectors.items():
            await timed(deliveries(agency, connector, WARM_UP), max(levels))
            delivered[agency] += WARM_UP
        for level in levels:
            for run in range(runs):
                rates[level][BASELINE].append(await timed([probe] * count, level))
                for agency, connector in connectors.items():
                    calls = deliveries(agency, connector, count)
                    rates[level][agency].append(await timed(calls, level))
                    delivered[agency] += count
                line = "  ".join(f"{n.split(':')[0]} {r[-1]:.0f}" for n, r in rates[level].items())
                print(f"  concurrency {level:>2}, run {run + 1}/{runs}: {line}", flush=True)
        print()
        for agency in AGENCIES:
            async with session.get(stats_url(agency, ready)) as response:
                stats = await response.json()
            # A retried delivery may have reached the sandbox the first time: then, and only
            # then, the sandbox sees a duplicate key (same payload) and answers with the
            # original reference. Anything beyond that is a bug.
            ok = stats["accepted"] == delivered[agency] and stats["duplicates"] <= retries.count(
                agency
            )
            print(
                f"{agency:<24} delivered {delivered[agency]:>6}  sandbox: accepted "
                f"{stats['accepted']:>6}, duplicates {stats['duplicates']}  "
                f"retried {retries.count(agency)}  {'ok' if ok else 'MISMATCH'}"
            )
            if not ok:
                raise SystemExit(f"{agency}: sandbox stats disagree with deliveries")
        for name, causes in retries.seen.items():
            for cause, times in causes.most_common():
                print(f"retried {name}: {times} x {cause}")
    finally:
        for connector in started:
            await connector.stop()
        await session.close()
    return rates


def report(rates: dict[int, dict[str, list[float]]], count: int, runs: int) -> None:
    levels = list(rates)
    head = "".join(f"{f'{level} in flight: /s (min–max)':>28} {'ratio':>6}" for level in levels)
    print(f"\n{count} calls per run, median of {runs} runs; ratio = median / baseline median")
    print(f"{'target':<32}{head}")
    for name in rates[levels[0]]:
        cells = []
        for level in levels:
            values = rates[level][name]
            median = statistics.median(values)
            base = statistics.median(rates[level][BASELINE])
            spread = f"{median:.0f} ({min(values):.0f}–{max(values):.0f})"
            cells.append(f"{spread:>28} {median / base:>6.2f}")
        print(f"{name:<32}{''.join(cells)}")


def main(count: int, runs: int, concurrency: int, serial: bool) -> None:
    configure_logging("WARNING")
    levels = [concurrency, 1] if serial and concurrency != 1 else [concurrency]
    with tempfile.TemporaryDirectory(prefix="diasyndesi-bench-connectors-") as tmp:
        server, ready = start_sandbox_process(Path(tmp))
        try:
            rates = asyncio.run(measure(ready, count, runs, levels))
        finally:
            stop_sandbox_process(server)
    report(rates, count, runs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="deliveries per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--no-serial", dest="serial", action="store_false", help="skip the concurrency-1 column"
    )
    args = parser.parse_args()
    main(args.count, args.runs, args.concurrency, args.serial)
