"""The projector never dies on one bad event, and never drops one because the database is
away: an unexpected error applying an event skips that event (counted), a database outage
leaves it uncommitted and retries it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from hub.db import Database
from hub.events import Event, decode, encode
from hub.metrics import HubMetrics
from hub.projector import Projector, is_outage
from schemas.events import TOPIC_DELIVERIES, DeliveryOutcome
from tests.databases import POSTGRES, migrated_database_url
from tests.kafka_records import Record

TP = TopicPartition(TOPIC_DELIVERIES, 0)


def outcome_record(offset: int) -> Record:
    outcome = DeliveryOutcome(
        referral_id=f"00000000-0000-4000-8000-{offset:012d}",
        agency="dypa",
        succeeded=True,
        attempts=1,
        reference="DYPA-1",
        occurred_at=datetime.now(UTC),
        submitted_event_id=f"event-{offset}",
    )
    out = encode(TOPIC_DELIVERIES, outcome.event_type, outcome, key=outcome.referral_id)
    return Record(TP.topic, TP.partition, offset, out.key, out.value, out.headers)


class ScriptedConsumer:
    """getmany / seek / commit / assignment over one partition, honouring seeks."""

    def __init__(self, records: list[Record], projector: Projector) -> None:
        self.records = records
        self.projector = projector
        self.next = 0
        self.committed: list[int] = []
        self.fetches = 0

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.next = offset

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
        self.fetches += 1
        batch = self.records[self.next :]
        self.next = len(self.records)
        if not batch:
            await asyncio.sleep(0.01)
            return {}
        return {TP: batch}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(offsets[TP])
        if offsets[TP] == len(self.records):
            self.projector.stop()  # all applied: end the run


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
    bad_id = dict(records[1].headers)["ce_id"].decode()
    consumer = ScriptedConsumer(records, projector)
    await asyncio.wait_for(projector.run(consumer), 10)  # type: ignore[arg-type]
    assert len(applied) == 2 and bad_id not in applied
    assert consumer.committed == [3]  # the partition moved on past the bad event
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
    second = dict(records[1].headers)["ce_id"].decode()
    consumer = ScriptedConsumer(records, projector)
    await asyncio.wait_for(projector.run(consumer), 10)  # type: ignore[arg-type]
    assert applied == [dict(r.headers)["ce_id"].decode() for r in records]  # none lost
    # A fetch is applied in one transaction: nothing is committed while the database is
    # away (the fetch is read again), everything once it is back.
    assert consumer.committed == [3]
    assert consumer.fetches >= 3  # kept polling (and heartbeating) while it waited


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


def decode_record(record: Record) -> Event:
    return decode(record.headers, record.key, record.value)
