"""``diasyndesi bench``: time from ``POST /v1/referrals`` to ``delivery: delivered``.

Starts a private embedded hub (own broker, own SQLite file, own sandbox, free ports),
submits referrals with a bounded number in flight and reports the median and p95, both as
the client sees it (polling the referral every 20 ms) and as the read model records it
(created_at → delivered_at). The baseline, measured in the same run, is one direct call
from the same connector code to the same sandbox: the ratio is the hub's whole overhead
(outbox, relay, Kafka, consumer, mapping, outcome event, projector).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp

from connectors.base import KEEPALIVE_S, Delivery
from connectors.employment_service.connector import EmploymentServiceConnector
from connectors.sandboxes.employment_service import EmploymentSandboxConfig
from connectors.sandboxes.employment_service import create_app as create_sandbox
from hub.broker import free_port
from hub.errors import DiasyndesiError
from hub.runtime import Embedded
from hub.samples import sample_referral
from hub.servers import start_server
from hub.settings import AgencyConnection, Settings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def describe(name: str, values: list[float]) -> str:
    return (
        f"{name:<38} median {statistics.median(values) * 1000:8.1f} ms   "
        f"p95 {percentile(values, 0.95) * 1000:8.1f} ms   n={len(values)}"
    )


async def _baseline(count: int) -> list[float]:
    """Direct connector → sandbox calls, no hub in between."""
    secret = "bench-" + uuid.uuid4().hex
    server = await start_server(
        create_sandbox(EmploymentSandboxConfig(client_secret=secret, decision_delay_s=0)),
        "127.0.0.1",
        0,
        "baseline sandbox",
    )
    connector = EmploymentServiceConnector(
        "dypa", AgencyConnection(base_url=server.url, username="diasyndesi", secret=secret)
    )
    await connector.start()
    timings = []
    try:
        for i in range(count):
            body = sample_referral(seed=i)
            delivery = Delivery(
                event_id=str(uuid.uuid4()),
                referral_id=str(uuid.uuid4()),
                agency="dypa",
                idempotency_key=uuid.uuid4().hex,
                payload={"hub_referral_id": str(uuid.uuid4()), **body},
            )
            started = time.perf_counter()
            await connector.deliver(delivery)
            timings.append(time.perf_counter() - started)
    finally:
        await connector.stop()
        await server.stop()
    return timings


FAN_OUT = ["GMI", "UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY", "HELP_AT_HOME"]


async def _submit_and_wait(
    session: aiohttp.ClientSession,
    url: str,
    seed: int,
    programmes: list[str] | None = None,
) -> tuple[float, float]:
    """POST one referral and poll it every 20 ms until every routed agency has it:
    (client-observed seconds, read-model seconds to the last delivery)."""
    body = sample_referral(seed=seed, programmes=programmes or ["UNEMPLOYMENT_REGISTRATION"])
    t0 = time.perf_counter()
    async with session.post(
        f"{url}/v1/referrals", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
    ) as response:
        if response.status != 202:
            raise DiasyndesiError(f"submit refused: {response.status}")
        referral_id = (await response.json())["id"]
    while True:
        async with session.get(f"{url}/v1/referrals/{referral_id}") as response:
            view = await response.json()
        agencies = view["agencies"]
        if all(a["delivery"] == "delivered" for a in agencies):
            last = max(datetime.fromisoformat(a["delivered_at"]) for a in agencies)
            recorded = last - datetime.fromisoformat(view["created_at"])
            return time.perf_counter() - t0, recorded.total_seconds()
        await asyncio.sleep(0.02)


async def run_bench(count: int, concurrency: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="diasyndesi-bench-") as tmp:
        settings = Settings(
            var_dir=Path(tmp),
            api_port=free_port(),
            sandbox_benefits_port=free_port(),
            sandbox_employment_port=free_port(),
            sandbox_grocery_port=free_port(),
            sandbox_municipal_port=free_port(),
            sandbox_grocery_capacity=100_000,
            embedded_broker_port=0,
            sandbox_decision_delay_s=3600,
            log_level="WARNING",
        )
        baseline = await _baseline(min(count, 200))
        started = time.perf_counter()
        embedded = Embedded(settings)
        await embedded.start()
        assert embedded.hub is not None
        api_ready = time.perf_counter() - started
        await embedded.hub.wait_consumers_assigned()
        ready = time.perf_counter() - started
        url = embedded.hub.api_url
        token = embedded.credentials["centres"]["KK-KOZANI"]
        lines = []
        try:
            async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {token}"},
                connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S),
            ) as s:
                await _submit_and_wait(s, url, seed=9_999)  # warm-up
                for level in concurrency:
                    limit = asyncio.Semaphore(level)

                    async def one(
                        seed: int, limit: asyncio.Semaphore = limit
                    ) -> tuple[float, float]:
                        async with limit:
                            return await _submit_and_wait(s, url, seed)

                    wall = time.perf_counter()
                    results = await asyncio.gather(*(one(10_000 * level + i) for i in range(count)))
                    wall = time.perf_counter() - wall
                    lines.append(
                        f"-- {count} referrals, {level} in flight: {count / wall:.1f} referrals/s"
                    )
                    lines.append(
                        describe("POST → delivered (client, 20 ms poll)", [r[0] for r in results])
                    )
                    lines.append(describe("POST → delivered (read model)", [r[1] for r in results]))
                    ratio = statistics.median(r[0] for r in results) / statistics.median(baseline)
                    lines.append(
                        f"   ratio of medians, client-observed / direct call: {ratio:.0f}x"
                    )
                fan_out = [
                    await _submit_and_wait(s, url, 20_000 + i, FAN_OUT)
                    for i in range(max(count // 4, 10))
                ]
                lines.append(
                    f"-- KK-KOZANI sample referral to all four agencies "
                    f"({' + '.join(FAN_OUT)}), 1 in flight"
                )
                lines.append(
                    describe("POST → all four delivered (client)", [r[0] for r in fan_out])
                )
                lines.append(
                    describe("POST → all four delivered (read model)", [r[1] for r in fan_out])
                )
        finally:
            await embedded.stop()
    print(f"start → API answering: {api_ready:.2f} s; → consumers joined (ready): {ready:.2f} s")
    print(describe("baseline: connector → sandbox direct", baseline))
    print("\n".join(lines))
