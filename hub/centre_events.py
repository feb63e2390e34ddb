"""What the hub tells a centre: one durable stream of events per centre.

An event is a row of ``centre_events`` written in the SAME transaction as the change that
causes it (the projector applying a delivery outcome, a status or a withdrawal outcome; the
overdue job marking an information request), so an event exists exactly when its change
committed: nothing is lost across a crash, nothing is told of a change that rolled back.
The row's id is the cursor the event stream (SSE ``id:`` and ``Last-Event-ID``) resumes
from. Webhook calls owed for the event are written in that transaction too, one row per
subscribed webhook (``webhook_deliveries``), and sent later by the dispatcher.

``data`` is ids, codes and times only (never personal data) and always carries
``referral_id``. Callers: ``record_centre_event`` for one, ``record_centre_events`` for a
batch (one query for the subscriptions, one insert each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.db import CentreEventRow, WebhookDeliveryRow, WebhookRow

REFERRAL_DELIVERED: Final = "referral.delivered"
REFERRAL_STATUS_CHANGED: Final = "referral.status_changed"
REFERRAL_DEAD_LETTERED: Final = "referral.dead_lettered"
REFERRAL_WITHDRAWN: Final = "referral.withdrawn"
REFERRAL_RECEIVED: Final = "referral.received"
INFORMATION_REQUEST_OVERDUE: Final = "information_request.overdue"

EVENT_TYPES: Final = (
    REFERRAL_DELIVERED,
    REFERRAL_STATUS_CHANGED,
    REFERRAL_DEAD_LETTERED,
    REFERRAL_WITHDRAWN,
    REFERRAL_RECEIVED,
    INFORMATION_REQUEST_OVERDUE,
)
"""Every type a centre may be told of (the SSE ``event:`` and a webhook's ``type``)."""


@dataclass(frozen=True)
class CentreEvent:
    """One event to record: which centre, what, about which referral, and its details
    (ids, codes and ISO times; ``referral_id`` is added)."""

    centre: str
    type: str
    referral_id: str
    data: dict[str, Any]


async def record_centre_event(
    session: AsyncSession, centre: str, event_type: str, referral_id: str, **data: Any
) -> None:
    """Record one event for ``centre`` inside ``session``'s transaction (e.g. the intake
    of a referral an agency made: ``record_centre_event(session, centre,
    REFERRAL_RECEIVED, referral_id, origin=agency)``)."""
    await record_centre_events(session, [CentreEvent(centre, event_type, referral_id, data)])


async def record_centre_events(session: AsyncSession, events: Sequence[CentreEvent]) -> None:
    """Record ``events`` in order inside ``session``'s transaction, with a webhook call
    owed for each subscription of their centre that asked for their type."""
    if not events:
        return
    for event in events:
        if event.type not in EVENT_TYPES:
            raise ValueError(f"unknown centre event type {event.type!r}")
    now = datetime.now(UTC)
    rows = [
        {
            "centre": e.centre,
            "type": e.type,
            "referral_id": e.referral_id,
            "data": {"referral_id": e.referral_id, **e.data},
            "created_at": now,
        }
        for e in events
    ]
    ids = list(
        (
            await session.execute(
                insert(CentreEventRow).returning(CentreEventRow.id, sort_by_parameter_order=True),
                rows,
            )
        ).scalars()
    )
    centres = {e.centre for e in events}
    hooks = (
        await session.execute(
            select(WebhookRow.id, WebhookRow.centre, WebhookRow.events).where(
                WebhookRow.centre.in_(centres)
            )
        )
    ).all()
    if not hooks:
        return
    owed = [
        {
            "webhook_id": hook_id,
            "centre": event.centre,
            "event_id": event_id,
            "type": event.type,
            "referral_id": event.referral_id,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for event_id, event in zip(ids, events, strict=True)
        for hook_id, centre, types in hooks
        if centre == event.centre and event.type in types
    ]
    if owed:
        await session.execute(insert(WebhookDeliveryRow), owed)


async def events_after(
    session: AsyncSession, centre: str, after: int, limit: int = 100
) -> list[CentreEventRow]:
    """The centre's events with an id above ``after``, oldest first."""
    found = await session.execute(
        select(CentreEventRow)
        .where(CentreEventRow.centre == centre, CentreEventRow.id > after)
        .order_by(CentreEventRow.id)
        .limit(limit)
    )
    return list(found.scalars())


async def last_event_id(session: AsyncSession, centre: str) -> int:
    """The id of the centre's newest event (0 if none): where a new stream starts."""
    found = await session.scalar(
        select(CentreEventRow.id)
        .where(CentreEventRow.centre == centre)
        .order_by(CentreEventRow.id.desc())
        .limit(1)
    )
    return int(found or 0)
