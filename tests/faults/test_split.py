"""Issue 4, production topology: ``serve`` + several ``worker`` processes on one external
broker. Workers join and leave the connectors' consumer groups mid-run, and one is
SIGKILLed while agency calls are in flight (after the agency acted, before the offset
commit). The group must hand its partitions over and nothing may be lost or duplicated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import EVERY_FAMILY, Client, Ports, drain_and_reconcile
from tests.faults.split import SplitHub
from tests.faults.test_scenarios import check, until

pytestmark = pytest.mark.faults


@pytest.fixture
async def split(tmp_path: Path) -> AsyncIterator[SplitHub]:
    hub = SplitHub(tmp_path / "var", Ports.free(), tmp_path / "logs")
    try:
        await asyncio.to_thread(hub.start, 1)
        yield hub
    finally:
        await asyncio.to_thread(hub.stop)


async def test_h_workers_join_leave_and_one_is_sigkilled_mid_call(split: SplitHub) -> None:
    client = Client(split)  # type: ignore[arg-type]  # SplitHub offers what Client reads
    try:
        # Every ΔΥΠΑ call takes 1.5 s, so a killed worker always has calls in flight whose
        # side effects the agency has recorded and whose offsets were never committed.
        await client.set_faults("dypa", latency_ms=1500)
        flowing = asyncio.create_task(client.submit_many("split", 240, rate_per_s=6))

        def accepted(n: int) -> bool:
            return len(client.stats.submitted) >= n

        await until(lambda: accepted(40), 60, "40 referrals accepted")
        second = await asyncio.to_thread(split.add_worker)  # worker2 joins: rebalance
        first = split.workers[0]
        await until(lambda: accepted(110), 60, "110 referrals accepted")
        first.kill()  # worker1: kill -9 mid-call; its members time out after 6 s
        killed_at_count = len(client.stats.submitted)
        await until(lambda: accepted(150), 60, "150 referrals accepted")
        await asyncio.to_thread(split.add_worker)  # worker3 joins
        await until(lambda: accepted(190), 60, "190 referrals accepted")
        code = await asyncio.to_thread(split.workers[1].terminate)  # worker2 leaves cleanly
        after_leave = len(client.stats.submitted)
        await asyncio.wait_for(flowing, 120)

        report = await drain_and_reconcile(
            "h: serve + workers joining, leaving, one SIGKILLed", client, timeout_s=180
        )
        # Pairs accepted after worker1 died and after worker2 left were necessarily
        # delivered by the survivors: the hand-over worked.
        late = client.stats.submitted[after_leave:]
        late_delivered = sum(
            report.states[(s.referral_id, a)].get("delivery") == "delivered"
            for s in late
            for a in s.routed
        )
        report.extra = (
            f"worker2_ready_s={second.ready_s:.1f} killed_after={killed_at_count} "
            f"worker2_exit={code} delivered_after_leave={late_delivered}/"
            f"{sum(len(s.routed) for s in late)} alive={split.alive()}"
        )
        check(report, split)  # type: ignore[arg-type]
        assert code == 0, f"worker2 did not leave cleanly (exit {code}):\n{split.workers[1].tail()}"
        assert report.duplicates_absorbed > 0, "the SIGKILL hit no call in flight"
        assert late and late_delivered == sum(len(s.routed) for s in late)
    finally:
        await client.close()


@pytest.fixture
async def two_serves(tmp_path: Path) -> AsyncIterator[SplitHub]:
    hub = SplitHub(tmp_path / "var", Ports.free(), tmp_path / "logs", serves=2)
    try:
        await asyncio.to_thread(hub.start, 2)
        yield hub
    finally:
        await asyncio.to_thread(hub.stop)


async def test_i_two_serves_and_two_workers_send_nothing_twice(two_serves: SplitHub) -> None:
    """Issue 8: two ``serve`` (two relays, two projectors) and two workers for every agency
    on one database: 300 five-agency referrals submitted in turn to both APIs reach every
    agency exactly once. Not absorbed by the agencies' idempotency: never sent twice."""
    client = Client(two_serves)  # type: ignore[arg-type]
    try:
        urls = [two_serves.api_url, f"http://127.0.0.1:{two_serves.ports.api2}"]
        await client.submit_many("two", 300, rate_per_s=30, api_urls=urls)
        report = await drain_and_reconcile(
            "i: two serve + two workers per agency", client, timeout_s=180
        )
        report.extra = f"alive={two_serves.alive()}"
        check(report, two_serves)  # type: ignore[arg-type]
        assert report.pairs == 300 * len(EVERY_FAMILY)  # one agency of every family each
        assert report.duplicates_absorbed == 0, "an agency was sent a referral twice"
        assert sorted(two_serves.alive()) == ["sandbox", "serve", "serve2", "worker1", "worker2"]
    finally:
        await client.close()
