"""The information duty over HTTP (docs/decisions/0016): recording that a
beneficiary asked to be informed, answering, listing what is due or overdue, and the
calendar alone so a centre's own system can show the date while the person is at the desk.

Only the centre that owns a referral records and answers its requests; a centre lists only
its own, an operator all of them; agencies have no part in it. No answer echoes a summary.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel

from hub.api.deps import HubState, PrincipalDep, StateDep
from hub.api.referrals import field_error
from hub.auth import Principal
from hub.db import ReferralRow
from hub.duty_calendar import CALENDAR_YEARS, athens_date, in_calendar
from hub.information_requests import (
    AlreadyAnswered,
    AnsweredBeforeAsked,
    BadCursor,
    NoSuchRequest,
    answer_request,
    list_requests,
    overdue_counts,
    record_request,
)
from hub.logs import get_logger
from schemas.information_request import (
    InformationRequest,
    InformationRequestAnswer,
    InformationRequestNew,
)

log = get_logger(__name__)
router = APIRouter(tags=["information requests"])

OUTSIDE_CALENDAR = (
    f"the Athens date must fall in {CALENDAR_YEARS.start}–{CALENDAR_YEARS.stop - 1}, "
    "the years the calendar answers for"
)
MAX_PAGE = 200
SCRAPE_TIMEOUT_S = 2.0


class InformationDue(BaseModel):
    centre: str
    requested_at: AwareDatetime
    due: date


class InformationRequestPage(BaseModel):
    items: list[InformationRequest]
    next_cursor: str | None


async def _owned_referral(state: HubState, principal: Principal, referral_id: str) -> ReferralRow:
    """The referral, if it exists (404) and belongs to the calling centre (403)."""
    async with state.db.sessions() as session:
        referral = await session.get(ReferralRow, referral_id)
    if referral is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such referral")
    if principal.kind != "centre" or principal.id != referral.centre:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "only the centre that owns the referral may do this"
        )
    return referral


@router.post(
    "/v1/referrals/{referral_id}/information-requests",
    status_code=status.HTTP_201_CREATED,
    response_model=InformationRequest,
    responses={401: {}, 403: {}, 404: {}, 413: {}, 422: {}},
)
async def new_information_request(
    referral_id: str, state: StateDep, principal: PrincipalDep, body: InformationRequestNew
) -> InformationRequest:
    """The beneficiary asked to be informed: due the 10th working day after the Athens date
    of ``requested_at`` at the centre. A time before the referral's submission is accepted
    (requests first made on paper)."""
    referral = await _owned_referral(state, principal, referral_id)
    if not in_calendar(athens_date(body.requested_at)):
        raise field_error("requested_at", OUTSIDE_CALENDAR, "outside_calendar")
    created = await record_request(state.db, state.registry, referral.id, referral.centre, body)
    state.metrics.information_requests.labels("recorded").inc()
    log.info(
        "information request recorded",
        referral_id=referral.id,
        request_id=created.id,
        channel=created.channel.value,
        due=created.due.isoformat(),
    )
    return created


@router.post(
    "/v1/referrals/{referral_id}/information-requests/{request_id}/answer",
    response_model=InformationRequest,
    responses={401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 422: {}},
)
async def answer_information_request(
    referral_id: str,
    request_id: str,
    state: StateDep,
    principal: PrincipalDep,
    body: InformationRequestAnswer,
) -> InformationRequest | JSONResponse:
    """The centre informed the beneficiary. A second answer is 409 with the request as it
    stands (``current``). The summary is stored, never shown or logged."""
    await _owned_referral(state, principal, referral_id)
    try:
        answered = await answer_request(state.db, referral_id, request_id, body)
    except NoSuchRequest:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "no such information request on this referral"
        ) from None
    except AnsweredBeforeAsked:
        raise field_error(
            "answered_at", "answered_at is before the request's requested_at", "before_request"
        ) from None
    except AlreadyAnswered as exc:
        return JSONResponse(
            {
                "detail": "information request already answered",
                "current": exc.current.model_dump(mode="json"),
            },
            status_code=status.HTTP_409_CONFLICT,
        )
    state.metrics.information_requests.labels(
        "answered_late" if answered.overdue else "answered_on_time"
    ).inc()
    log.info(
        "information request answered",
        referral_id=referral_id,
        request_id=request_id,
        late=answered.overdue,
    )
    return answered


@router.get(
    "/v1/information-requests",
    response_model=InformationRequestPage,
    responses={401: {}, 403: {}, 422: {}},
)
async def list_information_requests(
    state: StateDep,
    principal: PrincipalDep,
    centre: str | None = None,
    overdue: bool | None = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> InformationRequestPage:
    """Newest first (by ``requested_at``); pass ``next_cursor`` back as ``cursor`` for the
    next page. A centre sees its own (the default ``centre``), an operator every centre's.
    ``overdue=true``: not answered by the end of the due day (open or answered late)."""
    if principal.kind == "agency":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "centres and operators only")
    if principal.kind == "centre":
        if centre is not None and centre != principal.id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a centre sees only its own")
        centre = principal.id
    elif centre is not None and centre not in state.registry.centres:
        raise field_error("centre", "unknown centre", "unknown_centre", location="query")
    try:
        page = await list_requests(
            state.db, centre=centre, overdue=overdue, cursor=cursor, limit=limit
        )
    except BadCursor:
        raise field_error(
            "cursor", "not a cursor of this list", "invalid_cursor", location="query"
        ) from None
    return InformationRequestPage(items=page.items, next_cursor=page.next_cursor)


@router.get(
    "/v1/centres/{centre}/information-due",
    response_model=InformationDue,
    responses={401: {}, 403: {}, 404: {}, 422: {}},
)
async def information_due(
    centre: str,
    requested_at: Annotated[AwareDatetime, Query()],
    state: StateDep,
    principal: PrincipalDep,
) -> InformationDue:
    """The due date a request made at ``requested_at`` would have at this centre, recording
    nothing. ``requested_at`` carries its offset (URL-encode the ``+``)."""
    if principal.kind == "agency" or (principal.kind == "centre" and principal.id != centre):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "that centre or an operator only")
    if centre not in state.registry.centres:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such centre")
    day = athens_date(requested_at)
    if not in_calendar(day):
        raise field_error("requested_at", OUTSIDE_CALENDAR, "outside_calendar", location="query")
    return InformationDue(
        centre=centre, requested_at=requested_at, due=state.registry.information_due(centre, day)
    )


async def refresh_overdue_gauge(state: HubState) -> None:
    """Set ``diasyndesi_information_requests_overdue`` for every centre from the database
    (a scrape hook of the API's ``/metrics``). Every ``serve`` reports the same numbers:
    aggregate with ``max``, not ``sum``. While the database is down the last values stay."""
    try:
        counts = await asyncio.wait_for(overdue_counts(state.db), SCRAPE_TIMEOUT_S)
    except Exception as exc:  # down or slow: /metrics must still answer
        log.warning("overdue information requests not counted", error=type(exc).__name__)
        return
    gauge = state.metrics.information_requests_overdue
    for centre in sorted({*state.registry.centres, *counts}):
        gauge.labels(centre).set(counts.get(centre, 0))
