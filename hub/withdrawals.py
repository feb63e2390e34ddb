"""Withdrawal intake and state: who may withdraw a referral, which agencies must be told,
and the one transaction that records it (its rows, a timeline entry and the outbox record
of ``gr.kk.referral.withdrawn.v1``) before the API answers 202.

A withdrawal names a subset of the referral's programmes, or all that are left. Each routed
agency handling one of them is told, by its connector, in its own protocol; the agency is
``complete`` when none of its programmes of the referral is left afterwards (its whole case
ends, and its delivery becomes ``withdrawn`` once it acknowledges). Programmes withdrawn
once cannot be withdrawn again (``AlreadyWithdrawn``, the API's 409). The overtaking rule
(a withdrawal that reaches the connector before the delivery) is in
docs/decisions/0019-withdrawal.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.auth import Principal
from hub.db import Database, DeliveryRow, OutboxRow, ReferralRow, WithdrawalRow
from hub.events import encode
from hub.outbox import TABLES, outbox_values
from hub.registry import Registry
from schemas.codes import ProgrammeCode, WithdrawalReason
from schemas.events import (
    REFERRAL_SUBMITTED,
    REFERRAL_WITHDRAWN,
    TOPIC_REFERRALS,
    ReferralWithdrawn,
)


class NoSuchReferral(Exception):
    """No referral with that id."""


class NotAllowed(Exception):
    """The principal may not withdraw this referral."""


class NotInReferral(Exception):
    """The ``index``-th programme named is not one of the referral's."""

    def __init__(self, index: int) -> None:
        super().__init__(f"programmes.{index}")
        self.index = index


class AlreadyWithdrawn(Exception):
    """Nothing named is left to withdraw; carries the current state."""

    def __init__(self, state: WithdrawalState) -> None:
        super().__init__("already withdrawn")
        self.state = state


class AgencyWithdrawal(BaseModel):
    agency: str
    state: str
    """``pending``, ``retrying``, ``withdrawn`` (acknowledged) or ``dead_lettered``."""
    programmes: list[str]
    whole: bool
    reference: str | None
    error_class: str | None
    acknowledged_at: datetime | None


class WithdrawalView(BaseModel):
    id: str
    reason: WithdrawalReason
    programmes: list[str]
    requested_at: datetime
    agencies: list[AgencyWithdrawal]


class AgencyDelivery(BaseModel):
    agency: str
    delivery: str


class WithdrawalState(BaseModel):
    """A referral's withdrawals so far: what is withdrawn, what is left, and where each
    agency stands (the body of a 409, and of ``GET /v1/referrals/{id}/withdrawals``)."""

    referral_id: str
    withdrawn_programmes: list[str]
    remaining_programmes: list[str]
    agencies: list[AgencyDelivery]
    withdrawals: list[WithdrawalView]


@dataclass(frozen=True)
class AcceptedWithdrawal:
    id: str
    referral_id: str
    programmes: list[str]
    agencies: list[str]
    complete_for: list[str]


def may_withdraw(principal: Principal, centre: str, origin: str | None = None) -> bool:
    """The owning centre, or the agency the referral came from (``origin``: referrals
    between agencies, decision 0021); an operator does not withdraw on a person's behalf."""
    if principal.kind == "centre":
        return principal.id == centre
    return principal.kind == "agency" and origin is not None and principal.id == origin


def _agency_programmes(registry: Registry, agency: str, programmes: list[str]) -> list[str]:
    """The referral's programmes that ``agency`` handles (all of them for an agency no
    longer in the registry: it was routed, so it must be told)."""
    known = registry.agencies.get(agency)
    if known is None:
        return list(programmes)
    handled = {code.value for code in known.programmes}
    return [p for p in programmes if p in handled]


async def _rows(session: AsyncSession, referral_id: str) -> list[WithdrawalRow]:
    found = await session.execute(
        select(WithdrawalRow)
        .where(WithdrawalRow.referral_id == referral_id)
        .order_by(WithdrawalRow.id)
    )
    return list(found.scalars())


async def _state(session: AsyncSession, referral: ReferralRow) -> WithdrawalState:
    rows = await _rows(session, referral.id)
    deliveries = await session.execute(
        select(DeliveryRow.agency, DeliveryRow.delivery)
        .where(DeliveryRow.referral_id == referral.id)
        .order_by(DeliveryRow.id)
    )
    programmes: list[str] = list(referral.body.get("programmes", []))
    withdrawn = {p for row in rows for p in row.programmes}
    views: dict[str, WithdrawalView] = {}
    for row in rows:
        view = views.setdefault(
            row.withdrawal_id,
            WithdrawalView(
                id=row.withdrawal_id,
                reason=WithdrawalReason(row.reason),
                programmes=[],
                requested_at=row.requested_at,
                agencies=[],
            ),
        )
        view.programmes.extend(p for p in row.programmes if p not in view.programmes)
        view.agencies.append(
            AgencyWithdrawal(
                agency=row.agency,
                state=row.state,
                programmes=list(row.programmes),
                whole=row.whole,
                reference=row.reference,
                error_class=row.error_class,
                acknowledged_at=row.acknowledged_at,
            )
        )
    return WithdrawalState(
        referral_id=referral.id,
        withdrawn_programmes=[p for p in programmes if p in withdrawn],
        remaining_programmes=[p for p in programmes if p not in withdrawn],
        agencies=[AgencyDelivery(agency=a, delivery=d) for a, d in deliveries],
        withdrawals=list(views.values()),
    )


async def _find(session: AsyncSession, referral_id: str, principal: Principal) -> ReferralRow:
    referral = (
        await session.execute(
            select(ReferralRow).where(ReferralRow.id == referral_id).with_for_update()
        )
    ).scalar_one_or_none()
    if referral is None:
        raise NoSuchReferral(referral_id)
    if not may_withdraw(principal, referral.centre, referral.origin):
        raise NotAllowed(referral_id)
    return referral


async def withdrawal_state(db: Database, referral_id: str, principal: Principal) -> WithdrawalState:
    """The referral's withdrawals (the owning centre, the originating agency or an operator)."""
    async with db.sessions() as session:
        referral = await session.get(ReferralRow, referral_id)
        if referral is None:
            raise NoSuchReferral(referral_id)
        allowed = principal.kind == "operator" or may_withdraw(
            principal, referral.centre, referral.origin
        )
        if not allowed:
            raise NotAllowed(referral_id)
        return await _state(session, referral)


async def accept_withdrawal(
    db: Database,
    registry: Registry,
    referral_id: str,
    principal: Principal,
    reason: WithdrawalReason,
    programmes: list[ProgrammeCode] | None = None,
) -> AcceptedWithdrawal:
    """Record a withdrawal of ``programmes`` (all that are left when None) and its outbox
    record in one transaction. Raises NoSuchReferral, NotAllowed, NotInReferral (naming the
    first programme that is not the referral's) or AlreadyWithdrawn (a programme named was
    withdrawn before, or nothing is left)."""
    now = datetime.now(UTC)
    async with db.transaction() as session:
        referral = await _find(session, referral_id, principal)
        body: dict[str, Any] = referral.body
        asked: list[str] = list(body.get("programmes", []))
        if programmes is not None:
            for index, code in enumerate(programmes):
                if code.value not in asked:
                    raise NotInReferral(index)
        rows = await _rows(session, referral_id)
        before = {p for row in rows for p in row.programmes}
        if programmes is None:
            wanted = [p for p in asked if p not in before]
        else:
            wanted = list(dict.fromkeys(code.value for code in programmes))
        if not wanted or before & set(wanted):
            raise AlreadyWithdrawn(await _state(session, referral))
        after = before | set(wanted)
        routed: list[str] = list(body.get("routed", []))
        concerned: dict[str, tuple[list[str], bool]] = {}
        for agency in routed:
            handled = _agency_programmes(registry, agency, asked)
            told = [p for p in handled if p in wanted]
            if told:
                concerned[agency] = (told, set(handled) <= after)
        if not concerned:  # the registry changed since routing: tell every routed agency
            concerned = {agency: (wanted, set(asked) <= after) for agency in routed}
        submitted = (
            await session.execute(
                select(OutboxRow.event_id)
                .where(
                    OutboxRow.referral_id == referral_id,
                    OutboxRow.event_type == REFERRAL_SUBMITTED,
                    OutboxRow.topic == TOPIC_REFERRALS,
                )
                .order_by(OutboxRow.id)
                .limit(1)
            )
        ).scalar_one()
        withdrawal_id = str(uuid.uuid4())
        complete = [agency for agency, (_, whole) in concerned.items() if whole]
        event = ReferralWithdrawn(
            referral_id=referral_id,
            centre=referral.centre,
            agencies=list(concerned),
            programmes=[ProgrammeCode(p) for p in wanted],
            complete_for=complete,
            reason=reason,
            submitted_event_id=submitted,
            withdrawn_at=now,
        )
        record = encode(
            TOPIC_REFERRALS,
            REFERRAL_WITHDRAWN,
            event,
            key=referral_id,
            event_id=withdrawal_id,
            time=now,
        )
        await session.execute(
            insert(TABLES["withdrawals"]),
            [
                {
                    "withdrawal_id": withdrawal_id,
                    "referral_id": referral_id,
                    "agency": agency,
                    "reason": reason.value,
                    "programmes": told,
                    "whole": whole,
                    "state": "pending",
                    "attempts": 0,
                    "requested_by": f"{principal.kind}:{principal.id}"[:80],
                    "requested_at": now,
                    "updated_at": now,
                }
                for agency, (told, whole) in concerned.items()
            ],
        )
        await session.execute(
            insert(TABLES["timeline"]),
            [
                {
                    "referral_id": referral_id,
                    "at": now,
                    "kind": "withdrawal_requested",
                    "detail": f"{reason.value}: {', '.join(wanted)}",
                }
            ],
        )
        await session.execute(
            insert(TABLES["outbox"]),
            [outbox_values(record, withdrawal_id, REFERRAL_WITHDRAWN, referral_id)],
        )
        await db.notify_outbox(session)
    return AcceptedWithdrawal(withdrawal_id, referral_id, wanted, list(concerned), complete)
