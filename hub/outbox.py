"""Intake: a referral, its routed deliveries, its timeline entry and its outbox record
commit in one transaction, before the API answers 202. The relay publishes later; if the
broker is down nothing accepted is lost.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from hub.centre_events import REFERRAL_RECEIVED, record_centre_event
from hub.db import (
    Base,
    Database,
    DeliveryRow,
    OutboxRow,
    ProcessedEventRow,
    ReferralRow,
    WithdrawalRow,
)
from hub.duty_calendar import athens_date
from hub.events import OutgoingRecord, encode
from hub.registry import Registry
from hub.retry_topics import H_REDRIVE_FOR
from schemas.events import (
    REFERRAL_SUBMITTED,
    REFERRAL_WITHDRAWN,
    STATUS_CHANGED,
    TOPIC_REFERRALS,
    ReferralSubmitted,
)
from schemas.referral import Referral, ReferralRequest

TABLES = Base.metadata.tables
"""Core tables: intake inserts through them, without the ORM's unit of work."""


class IdempotencyConflict(Exception):
    """The same Idempotency-Key was used before with a different body."""


@dataclass(frozen=True)
class Accepted:
    referral_id: str
    routed: list[str]
    created: bool
    municipality: str
    """The municipality the referral was routed by (``Registry.routing_municipality``)."""


def request_hash(request: ReferralRequest) -> str:
    """A stable digest of the request body, to tell an honest repeat from key reuse."""
    canonical = orjson.dumps(request.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def outbox_values(
    record: OutgoingRecord, event_id: str, event_type: str, referral_id: str
) -> dict[str, Any]:
    """One outbox row as Core insert values."""
    return {
        "event_id": event_id,
        "referral_id": referral_id,
        "event_type": event_type,
        "topic": record.topic,
        "key": record.key,
        "headers": [[name, value.decode()] for name, value in record.headers],
        "value": record.value,
        "created_at": datetime.now(UTC),
        "publish_count": 0,
    }


async def on_referral_received(session: AsyncSession, referral: Referral, origin: str) -> None:
    """The centre's side of a referral an agency made: called inside its intake transaction
    (``referral.centre`` is the centre responsible for the person, ``origin`` the agency).

    The centre's event stream records ``referral.received`` here (ids and codes only, in
    the same transaction, so the event exists exactly when the referral does)."""
    await record_centre_event(
        session,
        referral.centre,
        REFERRAL_RECEIVED,
        referral.id,
        origin=origin,
        programmes=[str(p) for p in referral.programmes],
        routed=list(referral.routed),
    )


async def accept_referral(
    db: Database,
    registry: Registry,
    request: ReferralRequest,
    idempotency_key: str,
    origin: str | None = None,
) -> Accepted:
    """Store a routed referral and its outbox record atomically, or return the earlier one.

    ``origin`` is who referred: the centre (the default) or an agency. An agency's referral
    is never routed back to it, and its Idempotency-Key is its own: keys are unique per
    origin, so two agencies (or an agency and the centre) may use the same one. The
    referral is routed by the beneficiary's municipality of residence when the address
    names one the registry knows, else by the centre's (``Registry.routing_municipality``).

    The common case, a new key, is one transaction of five Core inserts (the ORM's unit of
    work cost half the intake's time): the referral, the programmes it asked for (what the
    caseload filters on, so nothing ever searches the body), its deliveries, its timeline
    entry and its outbox record. A repeated key meets the unique constraint and is
    answered from what is stored. Raises RoutingError (unroutable programme) or
    IdempotencyConflict.
    """
    origin = origin or request.centre
    digest = request_hash(request)
    address = request.beneficiary.address
    municipality = registry.routing_municipality(
        request.centre, address.municipality if address is not None else None
    )
    routed = registry.route(
        request.centre,
        list(request.programmes),
        municipality=municipality,
        origin=origin,
    )
    now = datetime.now(UTC)
    referral = Referral(
        **request.model_dump(),
        id=str(uuid.uuid4()),
        created_at=now,
        municipality=municipality,
        routed=routed,
    )
    event_id = str(uuid.uuid4())
    record = encode(
        TOPIC_REFERRALS,
        REFERRAL_SUBMITTED,
        ReferralSubmitted(referral=referral),
        key=referral.id,
        event_id=event_id,
        time=now,
    )
    try:
        async with db.transaction() as session:
            await session.execute(
                insert(TABLES["referrals"]),
                [
                    {
                        "id": referral.id,
                        "centre": referral.centre,
                        "origin": origin,
                        "municipality": referral.municipality,
                        "caseworker": referral.caseworker,
                        "created_at": now,
                        # counted from the Athens date: 00:30 in Athens is still
                        # yesterday in UTC
                        "due": registry.information_due(referral.centre, athens_date(now)),
                        "idempotency_key": idempotency_key,
                        "request_hash": digest,
                        "body": referral.model_dump(mode="json"),
                    }
                ],
            )
            await session.execute(
                insert(TABLES["referral_programmes"]),
                [
                    {"referral_id": referral.id, "programme": programme.value}
                    for programme in referral.programmes
                ],
            )
            await session.execute(
                insert(TABLES["deliveries"]),
                [
                    {
                        "referral_id": referral.id,
                        "agency": agency,
                        "delivery": "pending",
                        "attempts": 0,
                        "updated_at": now,
                    }
                    for agency in routed
                ],
            )
            await session.execute(
                insert(TABLES["timeline"]),
                [
                    {
                        "referral_id": referral.id,
                        "at": now,
                        "kind": "submitted",
                        "detail": f"routed to {', '.join(routed)}",
                    }
                ],
            )
            await session.execute(
                insert(TABLES["outbox"]),
                [outbox_values(record, event_id, REFERRAL_SUBMITTED, referral.id)],
            )
            if origin != referral.centre:
                await on_referral_received(session, referral, origin)
            await db.notify_outbox(session)
    except IntegrityError:
        # The key was used before (or a concurrent request with it won the race): answer
        # as it was answered, or refuse a different body under the same key.
        existing = await _find_existing(db, origin, idempotency_key, digest)
        if existing is None:
            raise
        return existing
    return Accepted(referral.id, routed, created=True, municipality=municipality)


async def _find_existing(
    db: Database, origin: str, idempotency_key: str, digest: str
) -> Accepted | None:
    async with db.sessions() as session:
        row = (
            await session.execute(
                select(ReferralRow)
                .options(defer(ReferralRow.body))
                .where(ReferralRow.origin == origin, ReferralRow.idempotency_key == idempotency_key)
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        if row.request_hash != digest:
            raise IdempotencyConflict(idempotency_key)
        agencies = (
            (
                await session.execute(
                    select(DeliveryRow.agency)
                    .where(DeliveryRow.referral_id == row.id)
                    .order_by(DeliveryRow.id)
                )
            )
            .scalars()
            .all()
        )
        return Accepted(row.id, list(agencies), created=False, municipality=row.municipality)


async def redrive_unfinished(db: Database) -> int:
    """Queue again what the broker may have lost: the submitted event of every referral with
    a non-terminal delivery, the withdrawal event of every withdrawal an agency has not
    acknowledged (after the submitted one: outbox order), and every agency status event the
    projector has not applied.

    Used on start and after the broker lost its data (the embedded broker keeps nothing).
    Stored event ids are reused, so agencies see the same idempotency keys and the projector
    ignores what it already applied.
    """
    async with db.transaction() as session:
        requeued = await _requeue_referrals(session, ("pending", "retrying"))
        requeued += await _requeue_withdrawals(session, ("pending", "retrying"))
        statuses = await session.execute(
            update(OutboxRow)
            .where(
                OutboxRow.event_type == STATUS_CHANGED,
                OutboxRow.sent_at.is_not(None),
                OutboxRow.event_id.not_in(select(ProcessedEventRow.event_id)),
            )
            .values(sent_at=None)
        )
        await db.notify_outbox(session)
        return requeued + int(statuses.rowcount or 0)  # type: ignore[attr-defined]


async def redrive_stale(db: Database, older_than_s: float, max_publishes: int = 5) -> int:
    """Anti-entropy: re-queue referrals with a delivery still ``pending`` (no outcome at all)
    although their event went out ``older_than_s`` ago. Something between the broker, the
    connector and the projector lost it; the agency's idempotency absorbs the repeat if it
    was only the answer that got lost. ``retrying`` deliveries are left to their retry
    topics, and after ``max_publishes`` a referral is left to the no-progress watchdog and
    the operators rather than re-sent forever."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    async with db.transaction() as session:
        stale = (OutboxRow.sent_at < cutoff, OutboxRow.publish_count < max_publishes)
        requeued = await _requeue_referrals(session, ("pending",), *stale)
        requeued += await _requeue_withdrawals(session, ("pending",), *stale)
        await db.notify_outbox(session)
        return requeued


async def _requeue_referrals(
    session: AsyncSession, states: tuple[str, ...], *conditions: ColumnElement[bool]
) -> int:
    """Mark the referral events of deliveries in ``states`` unsent again, each naming the
    agencies still owed it (``x-dsy-redrive-for``) so the others' connectors skip it."""
    found = await session.execute(
        select(OutboxRow, DeliveryRow.agency)
        .join(DeliveryRow, DeliveryRow.referral_id == OutboxRow.referral_id)
        .where(
            DeliveryRow.delivery.in_(states),
            OutboxRow.event_type == REFERRAL_SUBMITTED,
            OutboxRow.topic == TOPIC_REFERRALS,
            OutboxRow.sent_at.is_not(None),
            *conditions,
        )
    )
    return _owed_again(found)


async def _requeue_withdrawals(
    session: AsyncSession, states: tuple[str, ...], *conditions: ColumnElement[bool]
) -> int:
    """As ``_requeue_referrals``, for withdrawal events whose agencies' parts are in
    ``states``, each naming the agencies still owed it."""
    found = await session.execute(
        select(OutboxRow, WithdrawalRow.agency)
        .join(WithdrawalRow, WithdrawalRow.withdrawal_id == OutboxRow.event_id)
        .where(
            WithdrawalRow.state.in_(states),
            OutboxRow.event_type == REFERRAL_WITHDRAWN,
            OutboxRow.topic == TOPIC_REFERRALS,
            OutboxRow.sent_at.is_not(None),
            *conditions,
        )
    )
    return _owed_again(found)


def _owed_again(found: Any) -> int:
    """Mark each outbox row unsent again, its ``x-dsy-redrive-for`` the agencies found."""
    owed: dict[int, tuple[OutboxRow, set[str]]] = {}
    for row, agency in found:
        owed.setdefault(row.id, (row, set()))[1].add(agency)
    for row, agencies in owed.values():
        kept = [[k, v] for k, v in row.headers if k != H_REDRIVE_FOR]
        row.headers = [*kept, [H_REDRIVE_FOR, ",".join(sorted(agencies))]]
        row.sent_at = None
    return len(owed)
