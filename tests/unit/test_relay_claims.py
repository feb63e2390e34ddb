"""Several relays (one per ``serve``) on one database publish every outbox row exactly once;
a claim left by a relay that died lapses; leases let one process at a time do a job.
Runs on SQLite and, under ``make test-postgres``, on PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.db import Database, OutboxRow
from hub.events import OutgoingRecord
from hub.leases import Leases
from hub.metrics import HubMetrics
from hub.relay import Relay
from hub.schema import upgrade
from tests.databases import fresh_database_url


class SlowBus:
    """Keeps what was published; each batch takes a little while, so relays overlap."""

    def __init__(self) -> None:
        self.records: list[OutgoingRecord] = []
        self.fail = False

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        await asyncio.sleep(random.uniform(0, 0.01))
        if self.fail:
            from hub.errors import BrokerError

            raise BrokerError("down")
        self.records.extend(records)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(fresh_database_url(tmp_path))
    await upgrade(database)
    yield database
    await database.dispose()


async def add_rows(db: Database, count: int) -> None:
    async with db.transaction() as session:
        session.add_all(
            OutboxRow(
                event_id=f"e-{i}",
                referral_id=f"r-{i}",
                event_type="test",
                topic="kk.test",
                key=f"r-{i}".encode(),
                headers=[["n", str(i)]],
                value=str(i).encode(),
                created_at=datetime.now(UTC),
            )
            for i in range(count)
        )


def relay(db: Database, bus: Any, **kwargs: Any) -> Relay:
    return Relay(db, bus, HubMetrics(), batch=25, **kwargs)


async def drain(relay: Relay) -> None:
    while await relay.publish_pending():
        pass


async def test_three_relays_publish_every_row_exactly_once(db: Database) -> None:
    await add_rows(db, 600)
    buses = [SlowBus(), SlowBus(), SlowBus()]
    relays = [relay(db, bus) for bus in buses]
    await asyncio.gather(*(drain(r) for r in relays))
    published = Counter(r.value for bus in buses for r in bus.records)
    assert len(published) == 600
    assert max(published.values()) == 1, "a row was published twice"
    assert all(bus.records for bus in buses), "the relays did not share the work"
    async with db.sessions() as session:
        unsent = await session.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.sent_at.is_(None))
        )
        counts = set((await session.execute(select(OutboxRow.publish_count))).scalars())
    assert unsent == 0
    assert counts == {1}


async def test_a_relay_publishes_its_claim_in_outbox_order(db: Database) -> None:
    await add_rows(db, 60)
    bus = SlowBus()
    await drain(relay(db, bus))
    assert [int(r.value) for r in bus.records] == list(range(60))


async def test_a_claim_left_by_a_dead_relay_lapses_and_is_taken_over(db: Database) -> None:
    await add_rows(db, 10)
    dead = relay(db, SlowBus(), claim_s=0.3)
    claimed = await dead._claim()  # claimed, then the process "dies" before publishing
    assert len(claimed) == 10
    bus = SlowBus()
    survivor = relay(db, bus)
    assert await survivor.publish_pending() == 0  # still claimed
    await asyncio.sleep(0.4)
    await drain(survivor)
    assert sorted(int(r.value) for r in bus.records) == list(range(10))


async def test_a_failed_publish_gives_the_rows_back_at_once(db: Database) -> None:
    await add_rows(db, 5)
    failing_bus = SlowBus()
    failing_bus.fail = True
    failing = relay(db, failing_bus)
    with pytest.raises(Exception, match="down"):
        await failing.publish_pending()
    bus = SlowBus()
    await drain(relay(db, bus))
    assert len(bus.records) == 5


async def test_one_holder_per_lease_until_it_lapses_or_is_released(db: Database) -> None:
    # Long leases while contending: with 0.3 s ones, a pause of the test process (a full
    # garbage collection late in the suite) between the two calls let the first lapse
    # before the second looked, and both "won" (seen once in CI).
    first, second = Leases(db, ttl_s=30), Leases(db, ttl_s=30)
    results = await asyncio.gather(first.acquire("job"), second.acquire("job"))
    assert sorted(results) == [False, True]
    holder, other = (first, second) if results[0] else (second, first)
    assert not await other.acquire("job")
    assert await holder.acquire("job", ttl_s=0.3)  # renewal, now a short one
    await asyncio.sleep(0.4)
    assert await other.acquire("job")  # lapsed
    await other.release("job")
    assert await holder.acquire("job")
    assert await holder.bump("job") == 1
    assert await other.generation("job") == 1
