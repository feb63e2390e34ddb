"""How delivery outcomes and agency statuses change the read model, a batch at a time.

The projector applies what one ``getmany`` returned in ONE transaction: a handful of
queries for the whole batch (which events were applied already, the deliveries and the
latest status times they touch), then in-memory updates in partition order, then one
flush. One transaction per event cost four queries and a commit each, twelve times per
four-agency referral; that made the projector the hub's bottleneck (it fell a minute
behind at 20 referrals/s).

Semantics per event are unchanged: an event applies once (its id is recorded with its
effect); an older or repeated agency status never overwrites a newer one; the first
successful outcome stamps ``delivered_at``; a dead-lettered outcome opens a dead letter.

A withdrawal's outcome updates its row of ``withdrawals``; an acknowledged withdrawal that
ends the agency's whole referral makes its delivery ``withdrawn``, which no later delivery
outcome changes (a delivery made after the withdrawal met the agency's record of it).

Each change a centre is told of (a delivery that became delivered or dead-lettered, an
agency's part of a withdrawal acknowledged, a status that is now different) records a
centre event in the same transaction (``hub/centre_events.py``); an event applied again, an
older status or the same status repeated changes nothing and so tells nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.centre_events import (
    REFERRAL_DEAD_LETTERED,
    REFERRAL_DELIVERED,
    REFERRAL_STATUS_CHANGED,
    REFERRAL_WITHDRAWN,
    CentreEvent,
    record_centre_events,
)
from hub.db import (
    DeadLetterRow,
    DeliveryRow,
    ProcessedEventRow,
    ReferralRow,
    TimelineRow,
    WithdrawalRow,
)
from hub.events import Event
from hub.logs import get_logger
from hub.metrics import HubMetrics
from schemas.events import DeliveryOutcome, StatusChanged, WithdrawalOutcome

log = get_logger(__name__)

Pair = tuple[str, str]


async def apply_events(session: AsyncSession, events: Sequence[Event], metrics: HubMetrics) -> int:
    """Apply ``events`` (in order) inside ``session``'s transaction; returns how many were
    applied now (an older status, recorded and rightly ignored, counts). Events not for the
    read model, already applied ones and ones for an unknown delivery do not count."""
    wanted: dict[str, Event] = {}
    for event in events:
        if isinstance(event.data, DeliveryOutcome | StatusChanged):
            wanted.setdefault(event.id, event)
    if not wanted:
        return 0
    done = set(
        (
            await session.execute(
                select(ProcessedEventRow.event_id).where(ProcessedEventRow.event_id.in_(wanted))
            )
        ).scalars()
    )
    todo = [event for event_id, event in wanted.items() if event_id not in done]
    if not todo:
        return 0
    now = datetime.now(UTC)
    referral_ids = {_data(e).referral_id for e in todo}
    rows: dict[Pair, DeliveryRow] = {
        (row.referral_id, row.agency): row
        for row in (
            await session.execute(
                select(DeliveryRow).where(DeliveryRow.referral_id.in_(referral_ids))
            )
        ).scalars()
    }
    latest = await _latest_status_times(session, todo, referral_ids)
    withdrawals = await _withdrawal_rows(session, todo)
    created = await _created_at(session, todo)
    processed, timeline, dead = [], [], []
    told: list[tuple[str, str, dict[str, object]]] = []  # (referral, type, data)
    changed = 0
    for event in todo:
        data = event.data
        assert isinstance(data, DeliveryOutcome | StatusChanged)
        processed.append({"event_id": event.id, "processed_at": now})
        row = rows.get((data.referral_id, data.agency))
        if row is None:
            log.warning("event for an unknown delivery", event_id=event.id, agency=data.agency)
            continue
        if isinstance(data, WithdrawalOutcome):
            part = withdrawals.get((data.withdrawal_id, data.agency))
            if part is None:
                log.warning("outcome of an unknown withdrawal", event_id=event.id)
                continue
            was = part.state
            _apply_withdrawal(part, row, data, metrics, now)
            if part.state != was and part.state in ("withdrawn", "dead_lettered"):
                told.append(_told_withdrawal(part, data))
            if data.dead_lettered:
                dead.append(_dead_letter(data, data.withdrawal_id, part.attempts))
            timeline.append(
                {
                    "referral_id": data.referral_id,
                    "at": data.occurred_at,
                    "agency": data.agency,
                    "kind": "withdrawn" if data.succeeded else "withdrawal_failed",
                    "detail": (data.reference or "before delivery")
                    if data.succeeded
                    else data.error_class,
                }
            )
        elif isinstance(data, DeliveryOutcome):
            was = row.delivery
            if _apply_outcome(row, data, metrics) and data.referral_id in created:
                waited = (data.occurred_at - created[data.referral_id]).total_seconds()
                metrics.submit_to_delivered.labels(data.agency).observe(max(waited, 0.0))
            if row.delivery != was and row.delivery in ("delivered", "dead_lettered"):
                told.append(_told_delivery(row, data))
            if data.dead_lettered:
                dead.append(_dead_letter(data, data.submitted_event_id, row.attempts))
            timeline.append(
                {
                    "referral_id": data.referral_id,
                    "at": data.occurred_at,
                    "agency": data.agency,
                    "kind": "delivered" if data.succeeded else "delivery_failed",
                    "detail": data.reference if data.succeeded else data.error_class,
                }
            )
        else:
            pair = (data.referral_id, data.agency)
            last = latest.get(pair)
            if last is not None and (
                data.occurred_at < last
                or (data.occurred_at == last and data.status.value == row.status)
            ):
                # Agencies' pushes arrive late, out of order or twice (a push retried after
                # a timeout the hub had already answered): never let an older status
                # overwrite a newer one. Found by the 2-minute outage scenario.
                log.info("older or repeated status ignored", agency=data.agency)
                changed += 1  # applied: recorded, and rightly without effect
                continue
            latest[pair] = data.occurred_at
            if row.status != data.status.value:
                told.append(
                    (
                        data.referral_id,
                        REFERRAL_STATUS_CHANGED,
                        {
                            "agency": data.agency,
                            "status": data.status.value,
                            "previous": row.status,
                            "reference": data.reference or row.reference,
                            "occurred_at": data.occurred_at.isoformat(),
                        },
                    )
                )
            row.status = data.status.value
            if data.reference:
                row.reference = data.reference
            timeline.append(
                {
                    "referral_id": data.referral_id,
                    "at": data.occurred_at,
                    "agency": data.agency,
                    "kind": "status",
                    "detail": data.status.value,
                }
            )
            metrics.status_updates.labels(data.agency, data.status.value).inc()
        row.updated_at = now
        changed += 1
    await session.execute(insert(ProcessedEventRow), processed)
    if timeline:
        await session.execute(insert(TimelineRow), timeline)
    if dead:
        await session.execute(insert(DeadLetterRow), dead)
    if told:
        await _tell_centres(session, told)
    return changed


async def _tell_centres(
    session: AsyncSession, told: list[tuple[str, str, dict[str, object]]]
) -> None:
    """Record what the batch changed as events of each referral's centre."""
    ids = {referral_id for referral_id, _, _ in told}
    centres = dict(
        (
            await session.execute(
                select(ReferralRow.id, ReferralRow.centre).where(ReferralRow.id.in_(ids))
            )
        ).all()
    )
    await record_centre_events(
        session,
        [CentreEvent(centres[r], kind, r, data) for r, kind, data in told if r in centres],
    )


def _told_delivery(row: DeliveryRow, data: DeliveryOutcome) -> tuple[str, str, dict[str, object]]:
    if row.delivery == "delivered":
        details: dict[str, object] = {"agency": data.agency, "reference": row.reference}
        return (
            data.referral_id,
            REFERRAL_DELIVERED,
            details | {"occurred_at": data.occurred_at.isoformat()},
        )
    return (
        data.referral_id,
        REFERRAL_DEAD_LETTERED,
        {
            "agency": data.agency,
            "operation": "delivery",
            "error_class": data.error_class,
            "occurred_at": data.occurred_at.isoformat(),
        },
    )


def _told_withdrawal(
    part: WithdrawalRow, data: WithdrawalOutcome
) -> tuple[str, str, dict[str, object]]:
    if part.state == "withdrawn":
        return (
            data.referral_id,
            REFERRAL_WITHDRAWN,
            {
                "agency": data.agency,
                "withdrawal_id": part.withdrawal_id,
                "programmes": list(part.programmes),
                "whole": part.whole,
                "occurred_at": data.occurred_at.isoformat(),
            },
        )
    return (
        data.referral_id,
        REFERRAL_DEAD_LETTERED,
        {
            "agency": data.agency,
            "operation": "withdrawal",
            "withdrawal_id": part.withdrawal_id,
            "error_class": data.error_class,
            "occurred_at": data.occurred_at.isoformat(),
        },
    )


def _data(event: Event) -> DeliveryOutcome | StatusChanged:
    assert isinstance(event.data, DeliveryOutcome | StatusChanged)
    return event.data


def _dead_letter(data: DeliveryOutcome, event_id: str, attempts: int) -> dict[str, object]:
    """A dead letter for the operators, naming the event to replay."""
    return {
        "referral_id": data.referral_id,
        "agency": data.agency,
        "event_id": event_id,
        "error_class": data.error_class or "",
        "reason": data.error_message,
        "permanent": data.permanent,
        "attempts": attempts,
        "dead_lettered_at": data.occurred_at,
        "replays": 0,
    }


def _apply_withdrawal(
    part: WithdrawalRow,
    row: DeliveryRow,
    data: WithdrawalOutcome,
    metrics: HubMetrics,
    now: datetime,
) -> None:
    """Update one agency's part of a withdrawal (and, when it ends the agency's whole
    referral and the agency acknowledged, its delivery) from an outcome."""
    part.attempts += data.attempts
    part.updated_at = now
    metrics.delivery_attempts.labels(data.agency).inc(data.attempts)
    if data.succeeded:
        metrics.withdrawals.labels(data.agency, "withdrawn").inc()
        part.state, part.error_class = "withdrawn", None
        part.reference = data.reference or part.reference
        part.acknowledged_at = part.acknowledged_at or data.occurred_at
        if part.whole:
            row.delivery, row.error_class = "withdrawn", None
            row.reference = row.reference or data.reference
        return
    outcome = "dead_lettered" if data.dead_lettered else "retrying"
    metrics.withdrawals.labels(data.agency, outcome).inc()
    if part.state != "withdrawn":
        part.state, part.error_class = outcome, data.error_class


def _apply_outcome(row: DeliveryRow, data: DeliveryOutcome, metrics: HubMetrics) -> bool:
    """Update one delivery from an outcome; True when it has just become delivered. A
    withdrawn delivery stays withdrawn: the agency holds the referral withdrawn."""
    row.attempts += data.attempts
    metrics.delivery_attempts.labels(data.agency).inc(data.attempts)
    if row.delivery == "withdrawn":
        metrics.deliveries.labels(data.agency, "after_withdrawal").inc()
        row.reference = row.reference or data.reference
        return False
    if data.succeeded:
        metrics.deliveries.labels(data.agency, "delivered").inc()
        first = row.delivery != "delivered"
        row.delivery = "delivered"
        row.error_class = None
        row.reference = data.reference or row.reference
        if first:
            row.delivered_at = data.occurred_at
        return first
    outcome = "dead_lettered" if data.dead_lettered else "retrying"
    metrics.deliveries.labels(data.agency, outcome).inc()
    if row.delivery != "delivered":
        row.delivery = outcome
        row.error_class = data.error_class
    return False


async def _withdrawal_rows(session: AsyncSession, events: list[Event]) -> dict[Pair, WithdrawalRow]:
    """The rows of the withdrawals whose outcomes are in the batch, by (withdrawal, agency)."""
    ids = {e.data.withdrawal_id for e in events if isinstance(e.data, WithdrawalOutcome)}
    if not ids:
        return {}
    found = await session.execute(select(WithdrawalRow).where(WithdrawalRow.withdrawal_id.in_(ids)))
    return {(part.withdrawal_id, part.agency): part for part in found.scalars()}


async def _latest_status_times(
    session: AsyncSession, events: list[Event], referral_ids: set[str]
) -> dict[Pair, datetime]:
    if not any(isinstance(e.data, StatusChanged) for e in events):
        return {}
    found = await session.execute(
        select(TimelineRow.referral_id, TimelineRow.agency, func.max(TimelineRow.at))
        .where(TimelineRow.referral_id.in_(referral_ids), TimelineRow.kind == "status")
        .group_by(TimelineRow.referral_id, TimelineRow.agency)
    )
    return {
        (referral_id, agency or ""): _utc(at) for referral_id, agency, at in found if at is not None
    }


async def _created_at(session: AsyncSession, events: list[Event]) -> dict[str, datetime]:
    """When each referral with a successful outcome in the batch was created (a metric)."""
    ids = {
        e.data.referral_id
        for e in events
        if isinstance(e.data, DeliveryOutcome)
        and not isinstance(e.data, WithdrawalOutcome)
        and e.data.succeeded
    }
    if not ids:
        return {}
    found = await session.execute(
        select(ReferralRow.id, ReferralRow.created_at).where(ReferralRow.id.in_(ids))
    )
    return {referral_id: at for referral_id, at in found}


def _utc(value: datetime) -> datetime:
    """``max()`` bypasses the column type, so SQLite hands back a naive (UTC) datetime or
    even a string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
