"""Dead letters for operators: list, show and replay (``diasyndesi dlq``, ``/v1/ops/dlq``).

A dead letter is a delivery's or a withdrawal's (its ``event_id`` names the referral's
submitted event or the withdrawal's). A replay re-publishes the original record — same
CloudEvent, same event id, so the agency sees the same idempotency key — through the outbox
to the connector's first retry topic, where only that agency's connector reads it. Replays
are audited (who, when, how often) and capped in rate so an operator cannot flood a
recovering agency.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import select

from hub.db import Database, DeadLetterRow, DeliveryRow, OutboxRow, TimelineRow, WithdrawalRow
from hub.errors import DiasyndesiError
from hub.retry_topics import H_REPLAYED_BY, OWN_HEADERS, retry_topic
from schemas.events import REFERRAL_SUBMITTED, REFERRAL_WITHDRAWN, TOPIC_REFERRALS


class DeadLetter(BaseModel):
    id: int
    referral_id: str
    agency: str
    event_id: str
    error_class: str
    reason: str | None
    permanent: bool
    attempts: int
    dead_lettered_at: datetime
    replayed_at: datetime | None
    replayed_by: str | None
    replays: int


class ReplayError(DiasyndesiError):
    """A dead letter that cannot be replayed (unknown id, already delivered)."""


def _view(row: DeadLetterRow) -> DeadLetter:
    return DeadLetter.model_validate(row, from_attributes=True)


async def list_dead_letters(
    db: Database,
    *,
    agency: str | None = None,
    error_class: str | None = None,
    include_replayed: bool = False,
    limit: int = 100,
) -> list[DeadLetter]:
    query = select(DeadLetterRow).order_by(DeadLetterRow.id).limit(limit)
    if agency:
        query = query.where(DeadLetterRow.agency == agency)
    if error_class:
        query = query.where(DeadLetterRow.error_class == error_class)
    if not include_replayed:
        query = query.where(DeadLetterRow.replayed_at.is_(None))
    async with db.sessions() as session:
        return [_view(row) for row in (await session.execute(query)).scalars()]


async def get_dead_letter(db: Database, dead_letter_id: int) -> DeadLetter | None:
    async with db.sessions() as session:
        row = await session.get(DeadLetterRow, dead_letter_id)
        return _view(row) if row else None


async def replay(db: Database, dead_letter_id: int, operator: str) -> DeadLetter:
    """Queue one dead letter for redelivery to its agency; returns the updated record."""
    now = datetime.now(UTC)
    async with db.transaction() as session:
        row = await session.get(DeadLetterRow, dead_letter_id)
        if row is None:
            raise ReplayError(f"no dead letter {dead_letter_id}")
        delivery = (
            await session.execute(
                select(DeliveryRow).where(
                    DeliveryRow.referral_id == row.referral_id, DeliveryRow.agency == row.agency
                )
            )
        ).scalar_one()
        original = (
            await session.execute(
                select(OutboxRow).where(
                    OutboxRow.event_id == row.event_id,
                    OutboxRow.event_type.in_([REFERRAL_SUBMITTED, REFERRAL_WITHDRAWN]),
                    OutboxRow.topic == TOPIC_REFERRALS,
                )
            )
        ).scalar_one()
        part = None
        if original.event_type == REFERRAL_WITHDRAWN:
            part = (
                await session.execute(
                    select(WithdrawalRow).where(
                        WithdrawalRow.withdrawal_id == row.event_id,
                        WithdrawalRow.agency == row.agency,
                    )
                )
            ).scalar_one()
            if part.state == "withdrawn":
                raise ReplayError(f"dead letter {dead_letter_id}: already acknowledged")
        elif delivery.delivery == "delivered":
            raise ReplayError(f"dead letter {dead_letter_id}: already delivered")
        elif delivery.delivery == "withdrawn":
            raise ReplayError(f"dead letter {dead_letter_id}: the referral was withdrawn")
        headers = [[k, v] for k, v in original.headers if k not in OWN_HEADERS]
        headers.append([H_REPLAYED_BY, operator])
        session.add(
            OutboxRow(
                event_id=original.event_id,
                referral_id=original.referral_id,
                event_type=original.event_type,
                topic=retry_topic(row.agency, 1),
                key=original.key,
                headers=headers,
                value=original.value,
                created_at=now,
            )
        )
        row.replayed_at, row.replayed_by, row.replays = now, operator, row.replays + 1
        await db.notify_outbox(session)
        if part is not None:
            part.state, part.updated_at = "retrying", now
        else:
            delivery.delivery, delivery.updated_at = "retrying", now
        session.add(
            TimelineRow(
                referral_id=row.referral_id,
                at=now,
                agency=row.agency,
                kind="replayed",
                detail=f"dead letter {row.id} replayed by {operator}",
            )
        )
        return _view(row)


async def replay_many(
    db: Database,
    operator: str,
    *,
    agency: str | None = None,
    error_class: str | None = None,
    limit: int = 1000,
    rate_per_s: float = 10.0,
) -> list[int]:
    """Replay every open dead letter matching the filters, at most ``rate_per_s`` a second."""
    done: list[int] = []
    for letter in await list_dead_letters(db, agency=agency, error_class=error_class, limit=limit):
        try:
            await replay(db, letter.id, operator)
        except ReplayError:
            continue
        done.append(letter.id)
        await asyncio.sleep(1.0 / rate_per_s)
    return done
