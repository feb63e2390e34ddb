"""The caseload behind ``GET /v1/referrals``: who sees which referral, the filters, keyset
pages with their cursor, and loading a page's deliveries and timeline in two queries.

Who sees what (``GET /v1/referrals/{id}`` follows the same rules):

- an operator sees every referral; a centre its own (``referrals.centre``);
- an agency the referrals it originated and those routed to it. Of a referral it did not
  originate it sees only its own part: its own delivery row and its own timeline entries,
  and the ``agency``, ``status``, ``delivery``, ``updated_since`` and ``programme`` filters
  look only at what it sees, so that listing cannot tell ΔΥΠΑ that a person it serves was
  also referred to, or refused by, a psychosocial service.

Pages are newest first, keyed on ``(created_at, id)`` descending: a referral submitted while
a client pages lands before its first page and never shifts the pages after it, so nothing
is skipped or repeated. The cursor is the last item's key and a digest binding it to the
listing it came from (the principal and the filters); it grants nothing, since every page is
filtered by visibility again, and the digest turns an edited, truncated or transplanted
cursor into a 422 instead of a silently different page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy import ColumnElement, Select, and_, exists, literal, or_, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, defer

from hub.auth import Principal
from hub.db import (
    DeliveryRow,
    InformationRequestRow,
    ReferralProgrammeRow,
    ReferralRow,
    TimelineRow,
)
from hub.registry import Registry
from schemas.codes import DeliveryState, EnrollmentStatus, ProgrammeCode

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
_CURSOR_VERSION = "1"


def is_overdue(now: datetime | None = None) -> ColumnElement[bool]:
    """THE definition of an overdue referral, as SQL over ``ReferralRow``: every referral
    view selects it as its ``overdue`` field and the caseload's ``overdue`` filter is this
    same expression, so changing the definition here changes both.

    The information duty: an information request of the referral is still unanswered at
    or after the end of its due day, Athens time (``overdue_at``, hub/duty_calendar.py)."""
    now = now or datetime.now(UTC)
    return exists().where(
        InformationRequestRow.referral_id == ReferralRow.id,
        InformationRequestRow.answered_at.is_(None),
        InformationRequestRow.overdue_at <= now,
    )


@dataclass(frozen=True)
class CaseloadFilter:
    """The filters of ``GET /v1/referrals``; None means "any"."""

    centre: str | None = None
    agency: str | None = None
    programme: ProgrammeCode | None = None
    status: EnrollmentStatus | None = None
    delivery: DeliveryState | None = None
    origin: str | None = None
    overdue: bool | None = None
    updated_since: datetime | None = None


class BadCursor(ValueError):
    """The cursor is not one this listing handed out."""


@dataclass(frozen=True)
class Position:
    """Where a page ended: the key of its last referral."""

    created_at: datetime
    referral_id: str


@dataclass(frozen=True)
class Page:
    rows: list[tuple[ReferralRow, bool]]
    """Each referral with its ``overdue`` flag."""
    next: Position | None


def visible_referrals(principal: Principal) -> ColumnElement[bool]:
    """The referrals ``principal`` may see, as a condition on ``ReferralRow``."""
    if principal.kind == "operator":
        return true()
    if principal.kind == "centre":
        return ReferralRow.centre == principal.id
    routed = select(DeliveryRow.referral_id).where(DeliveryRow.agency == principal.id)
    return or_(ReferralRow.origin == principal.id, ReferralRow.id.in_(routed))


def _originated(agency: str) -> Select[str]:
    """Ids of the referrals ``agency`` made; an alias, so that it is never correlated with
    an outer query on ``referrals``."""
    origin = aliased(ReferralRow)
    return select(origin.id).where(origin.origin == agency)


def visible_deliveries(principal: Principal) -> ColumnElement[bool] | None:
    """Which delivery rows of a visible referral ``principal`` sees (None: all of them)."""
    if principal.kind != "agency":
        return None
    return or_(
        DeliveryRow.agency == principal.id,
        DeliveryRow.referral_id.in_(_originated(principal.id)),
    )


def visible_timeline(principal: Principal) -> ColumnElement[bool] | None:
    """Which timeline entries of a visible referral ``principal`` sees (None: all)."""
    if principal.kind != "agency":
        return None
    return or_(
        TimelineRow.agency == principal.id,
        TimelineRow.referral_id.in_(_originated(principal.id)),
    )


def conditions(
    wanted: CaseloadFilter, principal: Principal, registry: Registry, now: datetime | None = None
) -> list[ColumnElement[bool]]:
    """Visibility and the filters, as conditions on ``ReferralRow``."""
    where = [visible_referrals(principal)]
    if wanted.centre is not None:
        where.append(ReferralRow.centre == wanted.centre)
    if wanted.origin is not None:
        where.append(ReferralRow.origin == wanted.origin)
    if wanted.programme is not None:
        where.append(_asked_for(wanted.programme, principal, registry))
    seen = visible_deliveries(principal)
    own = [] if seen is None else [seen]
    rows = list(own)
    if wanted.agency is not None:
        rows.append(DeliveryRow.agency == wanted.agency)
    if wanted.status is not None:
        rows.append(DeliveryRow.status == wanted.status.value)
    if wanted.delivery is not None:
        rows.append(DeliveryRow.delivery == wanted.delivery.value)
    if len(rows) > len(own):
        # one delivery row meets them all: `agency=opeka&status=rejected` is ΟΠΕΚΑ's refusal
        where.append(_with_delivery(rows))
    if wanted.updated_since is not None:
        where.append(_with_delivery([*own, DeliveryRow.updated_at >= wanted.updated_since]))
    if wanted.overdue is not None:
        late = is_overdue(now)
        where.append(late if wanted.overdue else ~late)
    return where


def _with_delivery(rows: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    return ReferralRow.id.in_(select(DeliveryRow.referral_id).where(*rows))


def _asked_for(
    programme: ProgrammeCode, principal: Principal, registry: Registry
) -> ColumnElement[bool]:
    asked = ReferralRow.id.in_(
        select(ReferralProgrammeRow.referral_id).where(
            ReferralProgrammeRow.programme == programme.value
        )
    )
    if principal.kind != "agency":
        return asked
    # An agency learns about programmes it handles; of the others, only on the referrals
    # it made itself.
    agency = registry.agencies.get(principal.id)
    if agency is not None and programme in agency.programmes:
        return asked
    return and_(asked, ReferralRow.origin == principal.id)


async def page(
    session: AsyncSession,
    where: Sequence[ColumnElement[bool]],
    after: Position | None,
    limit: int,
    now: datetime | None = None,
) -> Page:
    """One page, newest first, after ``after``: a single query."""
    query = _referrals(now).where(*where)
    if after is not None:
        query = query.where(
            tuple_(ReferralRow.created_at, ReferralRow.id)
            < tuple_(_bound(after.created_at), after.referral_id)
        )
    query = query.order_by(ReferralRow.created_at.desc(), ReferralRow.id.desc()).limit(limit + 1)
    found = [(row, bool(late)) for row, late in (await session.execute(query)).all()]
    more = len(found) > limit
    found = found[:limit]
    last = found[-1][0] if more else None
    return Page(found, Position(last.created_at, last.id) if last is not None else None)


def _referrals(now: datetime | None) -> Select[ReferralRow, bool]:
    """Referrals with their ``overdue`` flag, without the body: the personal data is never
    needed for a view, and loading it would be most of a page's bytes."""
    return select(ReferralRow, is_overdue(now).label("overdue")).options(
        defer(ReferralRow.body, raiseload=True)
    )


def _bound(at: datetime) -> ColumnElement[datetime]:
    """A datetime bound through the column's type (UTC on every backend)."""
    return literal(at, ReferralRow.created_at.type)


async def one(
    session: AsyncSession, referral_id: str, principal: Principal, now: datetime | None = None
) -> tuple[ReferralRow, bool, bool] | None:
    """A referral with its ``overdue`` flag and whether ``principal`` may see it (by
    ``visible_referrals``, in the same query), or None if there is no such referral."""
    found = (
        await session.execute(
            _referrals(now)
            .add_columns(visible_referrals(principal).label("visible"))
            .where(ReferralRow.id == referral_id)
        )
    ).first()
    if found is None:
        return None
    referral, late, visible = found
    return referral, bool(late), bool(visible)


@dataclass
class Details:
    deliveries: dict[str, list[DeliveryRow]]
    timeline: dict[str, list[TimelineRow]]
    information_requests: dict[str, list[InformationRequestRow]]
    now: datetime
    """When the details were read: the requests' ``overdue`` is computed at this instant."""


async def details(session: AsyncSession, principal: Principal, ids: Sequence[str]) -> Details:
    """The deliveries, timeline and information requests ``principal`` sees of ``ids``:
    three queries for a page (an agency sees no information requests: they are between the
    person and the centre)."""
    out = Details(defaultdict(list), defaultdict(list), defaultdict(list), datetime.now(UTC))
    if not ids:
        return out
    query = select(DeliveryRow).where(DeliveryRow.referral_id.in_(ids))
    seen = visible_deliveries(principal)
    if seen is not None:
        query = query.where(seen)
    for row in (await session.execute(query.order_by(DeliveryRow.id))).scalars():
        out.deliveries[row.referral_id].append(row)
    entries = select(TimelineRow).where(TimelineRow.referral_id.in_(ids))
    shown = visible_timeline(principal)
    if shown is not None:
        entries = entries.where(shown)
    for entry in (
        await session.execute(entries.order_by(TimelineRow.at, TimelineRow.id))
    ).scalars():
        out.timeline[entry.referral_id].append(entry)
    if principal.kind != "agency":
        asked = (
            select(InformationRequestRow)
            .options(defer(InformationRequestRow.summary))  # free text, never shown
            .where(InformationRequestRow.referral_id.in_(ids))
        )
        for request in (
            await session.execute(
                asked.order_by(InformationRequestRow.requested_at, InformationRequestRow.id)
            )
        ).scalars():
            out.information_requests[request.referral_id].append(request)
    return out


def _digest(principal: Principal, wanted: CaseloadFilter, position: Position) -> str:
    listing = [
        principal.kind,
        principal.id,
        *(None if v is None else str(v) for v in astuple(wanted)),
        position.created_at.isoformat(),
        position.referral_id,
    ]
    return hashlib.sha256(orjson.dumps(listing)).hexdigest()[:16]


def encode_cursor(principal: Principal, wanted: CaseloadFilter, position: Position) -> str:
    """An opaque, URL-safe cursor for the page after ``position`` of this listing."""
    payload = [
        _CURSOR_VERSION,
        position.created_at.astimezone(UTC).isoformat(),
        position.referral_id,
        _digest(principal, wanted, position),
    ]
    return base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()


def decode_cursor(cursor: str, principal: Principal, wanted: CaseloadFilter) -> Position:
    """The position a cursor of this listing stands for; BadCursor for anything else."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        version, at, referral_id, digest = orjson.loads(raw)
        created_at = datetime.fromisoformat(at)
        uuid.UUID(referral_id)
    except (binascii.Error, AttributeError, TypeError, ValueError):
        raise BadCursor("cursor is not one this listing handed out") from None
    if version != _CURSOR_VERSION or created_at.tzinfo is None:
        raise BadCursor("cursor is not one this listing handed out")
    position = Position(created_at.astimezone(UTC), referral_id)
    if digest != _digest(principal, wanted, position):
        raise BadCursor("cursor belongs to another listing (other filters) or was altered")
    return position
