"""The projector never dies on one bad event, and never drops one because the database is
away: an unexpected error applying an event skips that event (counted), a database outage
leaves it uncommitted and retries it."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from hub.bus import MemoryBus, MemoryConsumer, MemoryPublisher, TopicPartition
from hub.db import Database
from hub.events import Event, OutgoingRecord, decode, encode
from hub.metrics import HubMetrics
from hub.projector import Projector, is_outage
from schemas.events import TOPIC_DELIVERIES, TOPIC_STATUS, DeliveryOutcome
from tests.databases import POSTGRES, migrated_database_url
from tests.memory_kafka import stop_when_committed

TP = TopicPartition(TOPIC_DELIVERIES, 0)


def outcome_record(offset: int) -> OutgoingRecord:
    outcome = DeliveryOutcome(
        referral_id=f"00000000-0000-4000-8000-{offset:012d}",
        agency="dypa",
        succeeded=True,
        attempts=1,
        reference="DYPA-1",
        occurred_at=datetime.now(UTC),
        submitted_event_id=f"event-{offset}",
    )
    return encode(TOPIC_DELIVERIES, outcome.event_type, outcome, key=outcome.referral_id)


def event_id(record: OutgoingRecord) -> str:
    return dict(record.headers)["ce_id"].decode()


async def consumer_of(
    records: list[OutgoingRecord], bus: MemoryBus | None = None
) -> MemoryConsumer:
    """A started consumer of the projector's topics, ``records`` published before it."""
    bus = bus or MemoryBus()
    publisher = MemoryPublisher(bus)
    for record in records:
        await publisher.publish(record)
    consumer = MemoryConsumer(bus, [TOPIC_DELIVERIES, TOPIC_STATUS], group_id="projector")
    await consumer.start()
    return consumer


def install(projector: Projector, apply: Callable[[Event], Awaitable[bool]], applied: list[str]):
    """Replace the projector's database work with ``apply`` per event; a batch behaves as
    one transaction (all or nothing), as ``apply_batch`` does."""

    async def apply_batch(events: Sequence[Event]) -> int:
        before = len(applied)
        try:
            for event in events:
                await apply(event)
        except BaseException:
            del applied[before:]  # rolled back
            raise
        return len(events)

    projector.apply = apply  # type: ignore[method-assign]
    projector.apply_batch = apply_batch  # type: ignore[method-assign]


async def test_an_event_that_cannot_be_applied_is_skipped_and_counted(tmp_path: Path) -> None:
    metrics = HubMetrics()
    projector = Projector(Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"), metrics)
    applied: list[str] = []

    async def apply(event: Event) -> bool:
        if event.id == bad_id:
            raise KeyError("Παπαδοπούλου")  # a bug, quoting data
        applied.append(event.id)
        return True

    install(projector, apply, applied)
    records = [outcome_record(n) for n in range(3)]
    bad_id = event_id(records[1])
    consumer = await consumer_of(records)
    stop_when_committed(consumer, projector.stop, {TP: 3})
    await asyncio.wait_for(projector.run(consumer), 10)
    assert len(applied) == 2 and bad_id not in applied
    assert consumer.commits == [{TP: 3}]  # the partition moved on past the bad event
    skipped = metrics.registry.get_sample_value(
        "diasyndesi_record_errors_total",
        {"consumer": "projector", "error_class": "unexpected:KeyError"},
    )
    assert skipped == 1.0


async def test_a_database_outage_is_retried_not_skipped(tmp_path: Path) -> None:
    projector = Projector(Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"), HubMetrics())
    applied: list[str] = []
    outage = {"left": 2}

    async def apply(event: Event) -> bool:
        if event.id == second and outage["left"]:
            outage["left"] -= 1
            raise OperationalError("UPDATE deliveries", {}, Exception("database is locked"))
        applied.append(event.id)
        return True

    install(projector, apply, applied)
    records = [outcome_record(n) for n in range(3)]
    second = event_id(records[1])
    consumer = await consumer_of(records)
    stop_when_committed(consumer, projector.stop, {TP: 3})
    await asyncio.wait_for(projector.run(consumer), 10)
    assert applied == [event_id(r) for r in records]  # none lost
    # A fetch is applied in one transaction: nothing is committed while the database is
    # away (the fetch is read again), everything once it is back.
    assert consumer.commits == [{TP: 3}]
    assert consumer.fetches >= 3  # kept polling (and heartbeating) while it waited


def outcome_in_partition(partition: int, start: int, partitions: int = 2) -> OutgoingRecord:
    """The first outcome from ``start`` on whose key lands in ``partition``."""
    n = start
    while zlib.crc32(outcome_record(n).key) % partitions != partition:
        n += 1
    return outcome_record(n)


async def test_poison_is_skipped_counted_and_committed_with_the_batch(tmp_path: Path) -> None:
    metrics = HubMetrics()
    projector = Projector(Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"), metrics)
    applied: list[str] = []

    async def apply(event: Event) -> bool:
        applied.append(event.id)
        return True

    install(projector, apply, applied)
    poison = OutgoingRecord(topic=TOPIC_DELIVERIES, key=b"x", headers=[], value=b"{not an event")
    records = [outcome_record(0), poison, outcome_record(2)]
    consumer = await consumer_of(records)
    stop_when_committed(consumer, projector.stop, {TP: 3})
    await asyncio.wait_for(projector.run(consumer), 10)
    assert applied == [event_id(records[0]), event_id(records[2])]
    assert consumer.commits == [{TP: 3}]
    poisoned = metrics.registry.get_sample_value(
        "diasyndesi_poison_records_total", {"consumer": "projector"}
    )
    assert poisoned == 1.0


async def test_an_outage_one_by_one_reads_again_every_partition_not_yet_applied(
    tmp_path: Path,
) -> None:
    """A batch that failed for one bad event is applied one event at a time; when the
    database goes away half way, the partition in hand AND the partitions not reached yet
    are read again, so nothing after the bad event is lost."""
    projector = Projector(Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"), HubMetrics())
    first = [outcome_in_partition(0, 0), outcome_in_partition(0, 100)]
    second = [outcome_in_partition(1, 200), outcome_in_partition(1, 300)]
    bad, unlucky = event_id(first[0]), event_id(first[1])
    applied: list[str] = []
    outage = {"left": 1}

    async def apply(event: Event) -> bool:
        if event.id == bad:
            raise KeyError("Παπαδοπούλου")
        if event.id == unlucky and outage["left"]:
            outage["left"] -= 1
            raise OperationalError("UPDATE deliveries", {}, Exception("database is locked"))
        applied.append(event.id)
        return True

    install(projector, apply, applied)
    consumer = await consumer_of([*first, *second], MemoryBus(partitions=2))
    p0, p1 = TopicPartition(TOPIC_DELIVERIES, 0), TopicPartition(TOPIC_DELIVERIES, 1)
    stop_when_committed(consumer, projector.stop, {p0: 2, p1: 2})
    await asyncio.wait_for(projector.run(consumer), 10)
    assert applied == [unlucky, *(event_id(r) for r in second)]
    assert consumer.commits == [{p0: 1}, {p0: 2, p1: 2}]


async def test_a_failed_fetch_is_waited_out(tmp_path: Path) -> None:
    projector = Projector(Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"), HubMetrics())
    applied: list[str] = []

    async def apply(event: Event) -> bool:
        applied.append(event.id)
        return True

    install(projector, apply, applied)
    consumer = await consumer_of([outcome_record(0)])
    consumer.fetch_errors.append(KafkaConnectionError())
    stop_when_committed(consumer, projector.stop, {TP: 1})
    await asyncio.wait_for(projector.run(consumer), 10)
    assert len(applied) == 1 and consumer.fetches >= 2


class DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter wraps: an error carrying PostgreSQL's SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def test_what_counts_as_an_outage() -> None:
    assert is_outage(OperationalError("SELECT 1", {}, Exception("server closed")))
    assert is_outage(ConnectionRefusedError())
    assert not is_outage(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")))
    assert not is_outage(ValueError("bad event"))
    # asyncpg's server-side errors arrive as a plain DBAPIError; the SQLSTATE decides.
    for sqlstate in ("57P01", "57P03", "08006", "53300", "40001", "40P01", "25006"):
        assert is_outage(DBAPIError("COMMIT", {}, DriverError(sqlstate))), sqlstate
    for sqlstate in ("23505", "22001", "42P01"):  # the event's fault (or a bug): skip it
        assert not is_outage(DBAPIError("INSERT", {}, DriverError(sqlstate))), sqlstate


@pytest.mark.skipif(not POSTGRES, reason="PostgreSQL only: a server refusing connections")
async def test_postgres_refusing_new_connections_is_an_outage(tmp_path: Path) -> None:
    """A server that refuses a new connection (stopping: 57P03; full: 53300) answers with
    a plain DBAPIError from the connect path. The projector must wait and retry the
    event, never skip it: the CI run that lost two statuses while PostgreSQL stopped."""
    url = make_url(migrated_database_url(tmp_path))
    role = f"full_{uuid.uuid4().hex[:8]}"
    admin = Database(url.render_as_string(hide_password=False))
    async with admin.engine.begin() as connection:
        await connection.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
    refused = Database(url.set(username=role).render_as_string(hide_password=False))
    try:
        with pytest.raises(Exception) as caught:
            await Projector(refused, HubMetrics()).apply_batch([decode_record(outcome_record(1))])
        assert type(caught.value).__name__ == "DBAPIError"  # not an OperationalError
        assert is_outage(caught.value), repr(caught.value)
    finally:
        await refused.dispose()
        await admin.dispose()


def decode_record(record: OutgoingRecord) -> Event:
    return decode(record.headers, record.key, record.value)
