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

from connectors.base import Delivery
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


async def run_bench(count: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="diasyndesi-bench-") as tmp:
        settings = Settings(
            var_dir=Path(tmp),
            api_port=free_port(),
            sandbox_employment_port=free_port(),
            embedded_broker_port=0,
            sandbox_decision_delay_s=3600,
            log_level="WARNING",
        )
        baseline = await _baseline(min(count, 200))
        started = time.perf_counter()
        embedded = Embedded(settings)
        await embedded.start()
        assert embedded.hub is not None
        url = embedded.hub.api_url
        token = embedded.credentials["centres"]["KK-KOZANI"]
        observed: list[float] = []
        recorded: list[float] = []
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
                await _wait_delivered_ready(s, url)
                ready = time.perf_counter() - started
                limit = asyncio.Semaphore(concurrency)

                async def one(i: int) -> None:
                    async with limit:
                        body = sample_referral(
                            seed=10_000 + i, programmes=["UNEMPLOYMENT_REGISTRATION"]
                        )
                        t0 = time.perf_counter()
                        async with s.post(
                            f"{url}/v1/referrals",
                            json=body,
                            headers={"Idempotency-Key": str(uuid.uuid4())},
                        ) as r:
                            if r.status != 202:
                                raise DiasyndesiError(f"submit refused: {r.status}")
                            referral_id = (await r.json())["id"]
                        while True:
                            async with s.get(f"{url}/v1/referrals/{referral_id}") as r:
                                view = await r.json()
                            agency = view["agencies"][0]
                            if agency["delivery"] == "delivered":
                                observed.append(time.perf_counter() - t0)
                                recorded.append(
                                    (
                                        datetime.fromisoformat(agency["delivered_at"])
                                        - datetime.fromisoformat(view["created_at"])
                                    ).total_seconds()
                                )
                                return
                            await asyncio.sleep(0.02)

                await one(-1)  # warm-up: waits for the consumer groups to finish joining
                warm = time.perf_counter() - started
                observed.clear()
                recorded.clear()
                wall = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(count)))
                wall = time.perf_counter() - wall
        finally:
            await embedded.stop()
    print(f"hub start to /readyz green: {ready:.1f} s; to first referral delivered: {warm:.1f} s")
    print(f"{count} referrals, {concurrency} in flight, {count / wall:.1f} referrals/s overall")
    print(describe("baseline: connector → sandbox direct", baseline))
    print(describe("POST → delivered (client, 20 ms poll)", observed))
    print(describe("POST → delivered (read model)", recorded))
    ratio = statistics.median(observed) / statistics.median(baseline)
    print(f"ratio of medians, hub end-to-end / direct call: {ratio:.1f}x")


async def _wait_delivered_ready(session: aiohttp.ClientSession, url: str) -> None:
    """Ready means /readyz is green; consumers may still be joining their groups, which
    the first referrals then wait for, as a real first request after a deploy would."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with session.get(f"{url}/readyz") as response:
            if response.status == 200:
                return
        await asyncio.sleep(0.1)
    raise DiasyndesiError("hub never became ready")
