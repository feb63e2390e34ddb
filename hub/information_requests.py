"""Information requests, the information duty of the Community Centres' rules
(docs/decisions/0016): a beneficiary asks the centre how their requests stand, and must be
told within ten working days.

Recording a request fixes its due date (``Registry.information_due`` from the Athens date
of the request) and the instant its due day ends (``overdue_at``), and notes it on the
referral's timeline. Answering one is a conditional update, so two answers racing each
other cannot both win. Lists are newest first (by ``requested_at``, then id) with a keyset
cursor: rows added while a client pages through never repeat or shift a page.

The answer's summary may hold personal data: it is stored, never put in a view, a timeline
entry, a log line or an error.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.db import Base, Database, InformationRequestRow
from hub.duty_calendar import athens_date, end_of_day, is_overdue
from hub.registry import Registry
from schemas.base import UUID_PATTERN
from schemas.codes import InformationChannel
from schemas.information_request import (
    InformationRequest,
    InformationRequestAnswer,
    InformationRequestNew,
)

TABLE = Base.metadata.tables["information_requests"]
TIMELINE = Base.metadata.tables["timeline"]
REQUESTED = "information_requested"
ANSWERED = "information_answered"
"""Timeline kinds: ids, channel and dates only."""


class NoSuchRequest(LookupError):
    """No information request with this id on this referral."""


class AnsweredBeforeAsked(ValueError):
    """An answer dated before the request it answers."""


class AlreadyAnswered(Exception):
    """The request was answered before; ``current`` is how it stands."""

    def __init__(self, current: InformationRequest) -> None:
        super().__init__("information request already answered")
        self.current = current


class BadCursor(ValueError):
    """A cursor this hub did not issue (or that was altered)."""


@dataclass(frozen=True)
class Page:
    items: list[InformationRequest]
    next_cursor: str | None


def view(row: InformationRequestRow, now: datetime) -> InformationRequest:
    """What the hub shows of a request: no summary."""
    return InformationRequest(
        id=row.id,
        referral_id=row.referral_id,
        requested_at=row.requested_at,
        channel=InformationChannel(row.channel),
        due=row.due,
        answered_at=row.answered_at,
        overdue=is_overdue(row.overdue_at, row.answered_at, now),
    )


async def record_request(
    db: Database,
    registry: Registry,
    referral_id: str,
    centre: str,
    body: InformationRequestNew,
) -> InformationRequest:
    """Store a new request of ``centre``'s referral, due the 10th working day after its
    Athens date at that centre, and note it on the timeline."""
    now = datetime.now(UTC)
    requested_at = body.requested_at.astimezone(UTC)
    due = registry.information_due(centre, athens_date(requested_at))
    row = InformationRequestRow(
        id=str(uuid.uuid4()),
        referral_id=referral_id,
        centre=centre,
        requested_at=requested_at,
        channel=body.channel.value,
        due=due,
        overdue_at=end_of_day(due),
        answered_at=None,
        summary=None,
        created_at=now,
    )
    async with db.transaction() as session:
        session.add(row)
        await session.execute(
            insert(TIMELINE),
            [
                {
                    "referral_id": referral_id,
                    "at": requested_at,
                    "kind": REQUESTED,
                    "detail": f"{row.id}: {row.channel}, due {due.isoformat()}",
                }
            ],
        )
    await request_fresh_status(referral_id, row.id)
    return view(row, now)


async def request_fresh_status(referral_id: str, request_id: str) -> None:
    """Ask every agency the referral was routed to for a fresh status, where its protocol
    allows (ΟΠΕΚΑ's status operation; a status read the REST agencies are to gain), so the
    centre answers the beneficiary from current facts (issue 10).

    A deliberate no-op for now: the agency side is separate work, which fills this in.
    Called after the request is committed; whatever it does must not fail the request.
    """
    del referral_id, request_id


async def answer_request(
    db: Database, referral_id: str, request_id: str, body: InformationRequestAnswer
) -> InformationRequest:
    """Record that the centre informed the beneficiary. Raises NoSuchRequest,
    AlreadyAnswered (with the current state) or AnsweredBeforeAsked."""
    answered_at = body.answered_at.astimezone(UTC)
    async with db.transaction() as session:
        row = await _find(session, referral_id, request_id)
        if row.answered_at is not None:
            raise AlreadyAnswered(view(row, datetime.now(UTC)))
        if answered_at < row.requested_at:
            raise AnsweredBeforeAsked("answered_at is before requested_at")
        session.expunge(row)  # the update below is Core, conditional on no answer yet
        done = await session.execute(
            update(TABLE)
            .where(TABLE.c.id == request_id, TABLE.c.answered_at.is_(None))
            .values(answered_at=answered_at, summary=body.summary or None)
        )
        won = bool(done.rowcount)  # type: ignore[attr-defined]
        if won:
            late = is_overdue(row.overdue_at, answered_at, answered_at)
            await session.execute(
                insert(TIMELINE),
                [
                    {
                        "referral_id": referral_id,
                        "at": answered_at,
                        "kind": ANSWERED,
                        "detail": f"{request_id}: {'late' if late else 'on time'}",
                    }
                ],
            )
    if not won:  # another answer committed between the read and the update
        raise AlreadyAnswered(await _current(db, referral_id, request_id))
    row.answered_at = answered_at
    return view(row, datetime.now(UTC))


async def _find(session: AsyncSession, referral_id: str, request_id: str) -> InformationRequestRow:
    row = await session.get(InformationRequestRow, request_id, populate_existing=True)
    if row is None or row.referral_id != referral_id:
        raise NoSuchRequest(request_id)
    return row


async def _current(db: Database, referral_id: str, request_id: str) -> InformationRequest:
    async with db.sessions() as session:
        return view(await _find(session, referral_id, request_id), datetime.now(UTC))


async def requests_of(session: AsyncSession, referral_id: str) -> list[InformationRequestRow]:
    """A referral's requests in the order they were made."""
    found = await session.execute(
        select(InformationRequestRow)
        .where(InformationRequestRow.referral_id == referral_id)
        .order_by(InformationRequestRow.requested_at, InformationRequestRow.id)
    )
    return list(found.scalars().all())


def overdue_condition(now: datetime, overdue: bool = True) -> ColumnElement[bool]:
    """SQL for ``is_overdue`` (or its negation) at ``now``."""
    r = InformationRequestRow
    if overdue:
        return or_(
            and_(r.answered_at.is_(None), r.overdue_at <= now), r.answered_at >= r.overdue_at
        )
    return or_(and_(r.answered_at.is_(None), r.overdue_at > now), r.answered_at < r.overdue_at)


async def list_requests(
    db: Database,
    *,
    centre: str | None,
    overdue: bool | None,
    cursor: str | None,
    limit: int,
) -> Page:
    """Newest first; ``cursor`` is a previous page's ``next_cursor``. Raises BadCursor."""
    now = datetime.now(UTC)
    r = InformationRequestRow
    query = select(r)
    if centre is not None:
        query = query.where(r.centre == centre)
    if overdue is not None:
        query = query.where(overdue_condition(now, overdue))
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        query = query.where(
            or_(r.requested_at < after_time, and_(r.requested_at == after_time, r.id < after_id))
        )
    query = query.order_by(r.requested_at.desc(), r.id.desc()).limit(limit + 1)
    async with db.sessions() as session:
        rows = list((await session.execute(query)).scalars().all())
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[view(row, now) for row in rows],
        next_cursor=encode_cursor(rows[-1].requested_at, rows[-1].id) if more else None,
    )


async def overdue_counts(db: Database) -> dict[str, int]:
    """Open requests past the end of their due day, per centre (for the metrics)."""
    r = InformationRequestRow
    async with db.sessions() as session:
        found = await session.execute(
            select(r.centre, func.count())
            .where(r.answered_at.is_(None), r.overdue_at <= datetime.now(UTC))
            .group_by(r.centre)
        )
        return {centre: int(count) for centre, count in found.all()}


_UUID = re.compile(UUID_PATTERN)


def encode_cursor(requested_at: datetime, request_id: str) -> str:
    """Opaque to clients: where the last page ended, as URL-safe base64 of a small JSON."""
    raw = orjson.dumps({"t": requested_at.astimezone(UTC).isoformat(), "id": request_id})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data: Any = orjson.loads(raw)
        moment = datetime.fromisoformat(data["t"])
        request_id = data["id"]
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise BadCursor("not a cursor of this list") from None
    if moment.tzinfo is None or not isinstance(request_id, str) or not _UUID.match(request_id):
        raise BadCursor("not a cursor of this list")
    return moment.astimezone(UTC), request_id
