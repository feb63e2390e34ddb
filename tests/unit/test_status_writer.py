"""Status pushes are written in groups: one transaction for whatever gathered, each push
answered on its own (routed or not, a replayed or reused ``webhook-id``), and a group whose
transaction fails is retried push by push."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.api.status_writer import NotRouted, StatusPush, StatusWriter, WebhookIdReused
from hub.db import Database, OutboxRow
from hub.events import encode, new_event_id
from hub.outbox import accept_referral
from hub.registry import Registry
from hub.samples import sample_referral
from hub.schema import upgrade
from hub.settings import Settings
from schemas.codes import EnrollmentStatus
from schemas.events import STATUS_CHANGED, TOPIC_STATUS, StatusChanged
from schemas.referral import ReferralRequest
from tests.databases import fresh_database_url


class CountingDatabase(Database):
    transactions = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        self.transactions += 1
        async with super().transaction() as session:
            yield session


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[CountingDatabase]:
    database = CountingDatabase(fresh_database_url(tmp_path))
    await upgrade(database)
    yield database
    await database.dispose()


def push(referral_id: str, agency: str = "dypa", **kwargs: Any) -> StatusPush:
    event_id = new_event_id()
    data = StatusChanged(
        referral_id=referral_id,
        agency=agency,
        status=EnrollmentStatus.RECEIVED,
        occurred_at=datetime.now(UTC),
    )
    record = encode(TOPIC_STATUS, STATUS_CHANGED, data, key=referral_id, event_id=event_id)
    return StatusPush(agency, referral_id, event_id, record, **kwargs)


async def outbox_rows(db: Database) -> int:
    async with db.sessions() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(OutboxRow)
                .where(OutboxRow.event_type == STATUS_CHANGED)
            )
            or 0
        )


async def test_a_group_is_one_transaction_and_each_push_gets_its_own_answer(
    db: CountingDatabase,
) -> None:
    registry = Registry.load(Settings().registry_dir)
    request = ReferralRequest.model_validate(sample_referral(seed=5))
    referral = (await accept_referral(db, registry, request, "k-1")).referral_id
    writer = StatusWriter(db)
    pushes = [push(referral) for _ in range(20)]
    signed = push(referral, message_id="msg_1", raw=b"body")
    again = push(referral, message_id="msg_1", raw=b"body")  # a replay in the same group
    reused = push(referral, message_id="msg_1", raw=b"other")  # same id, other body
    stranger = push(referral, agency="opeka")  # a SOAP agency: this referral is not its
    before = db.transactions
    results = await asyncio.gather(
        *(writer.write(p) for p in [*pushes, signed, again, reused, stranger]),
        return_exceptions=True,
    )
    assert db.transactions - before == 1
    assert results[:20] == [(p.event_id, False) for p in pushes]
    assert results[20] == (signed.event_id, False)
    assert results[21] == (signed.event_id, True)
    assert isinstance(results[22], WebhookIdReused)
    assert isinstance(results[23], NotRouted)
    assert await outbox_rows(db) == 21
    # A later replay of the recorded webhook-id is absorbed from the database.
    later = push(referral, message_id="msg_1", raw=b"body")
    assert await writer.write(later) == (signed.event_id, True)
    assert await outbox_rows(db) == 21


async def test_a_failing_group_is_retried_push_by_push(db: CountingDatabase) -> None:
    registry = Registry.load(Settings().registry_dir)
    request = ReferralRequest.model_validate(sample_referral(seed=6))
    referral = (await accept_referral(db, registry, request, "k-2")).referral_id
    writer = StatusWriter(db)
    good = [push(referral) for _ in range(3)]
    bad = push(referral)
    bad.record = bad.record.__class__(  # a value the outbox cannot store
        topic=bad.record.topic,
        key=bad.record.key,
        headers=bad.record.headers,
        value=None,  # type: ignore[arg-type]
    )
    results = await asyncio.gather(*(writer.write(p) for p in [*good, bad]), return_exceptions=True)
    assert results[:3] == [(p.event_id, False) for p in good]
    assert isinstance(results[3], Exception)
    assert await outbox_rows(db) == 3
