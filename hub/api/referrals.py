"""Referral intake and read model: ``POST /v1/referrals``, ``GET /v1/referrals/{id}``."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Response, status
from pydantic import BaseModel
from sqlalchemy import select

from hub.api.deps import PrincipalDep, StateDep
from hub.db import DeliveryRow, ReferralRow, TimelineRow
from hub.errors import RoutingError
from hub.information_requests import requests_of, view
from hub.outbox import IdempotencyConflict, accept_referral
from schemas.codes import DeliveryState, EnrollmentStatus
from schemas.information_request import InformationRequest
from schemas.referral import ReferralRequest

router = APIRouter(prefix="/v1/referrals", tags=["referrals"])


class ReferralAccepted(BaseModel):
    id: str
    routed: list[str]
    status_url: str


class AgencyView(BaseModel):
    agency: str
    delivery: DeliveryState
    attempts: int
    status: EnrollmentStatus | None
    reference: str | None
    due: date
    delivered_at: datetime | None = None
    error_class: str | None = None


class TimelineEntry(BaseModel):
    at: datetime
    kind: str
    agency: str | None
    detail: str | None


class ReferralView(BaseModel):
    id: str
    centre: str
    created_at: datetime
    due: date
    overdue: bool
    agencies: list[AgencyView]
    information_requests: list[InformationRequest]
    timeline: list[TimelineEntry]


def field_error(
    field: str,
    message: str,
    kind: str,
    location: Literal["body", "query", "path"] = "body",
) -> HTTPException:
    """A 422 in the same shape as FastAPI's validation errors, naming one field."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"loc": [location, *field.split(".")], "field": field, "msg": message, "type": kind}],
    )


async def idempotency_key(
    key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str:
    if key is None or not key.strip():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Idempotency-Key header is required")
    if len(key) > 200:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Idempotency-Key is longer than 200")
    return key.strip()


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReferralAccepted,
    responses={400: {}, 401: {}, 403: {}, 413: {}, 422: {}},
)
async def submit_referral(
    state: StateDep,
    principal: PrincipalDep,
    key: Annotated[str, Depends(idempotency_key)],
    body: ReferralRequest,
    response: Response,
) -> ReferralAccepted:
    """Accept a referral once; it is stored with its outbox record before this answers."""
    if principal.kind != "centre":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only a centre may submit referrals")
    if body.centre not in state.registry.centres:
        state.metrics.intake_rejected.labels("unknown_centre").inc()
        raise field_error("centre", "unknown centre", "unknown_centre")
    if body.centre != principal.id:
        state.metrics.intake_rejected.labels("other_centre").inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a centre may submit only its own referrals")
    try:
        accepted = await accept_referral(state.db, state.registry, body, key)
    except RoutingError as exc:
        state.metrics.intake_rejected.labels("unroutable").inc()
        raise field_error(exc.field, str(exc), "unroutable") from None
    except IdempotencyConflict:
        state.metrics.intake_rejected.labels("idempotency_conflict").inc()
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "Idempotency-Key was already used with a different body",
        ) from None
    if accepted.created:
        state.metrics.referrals_accepted.inc()
        state.wake_relay()
    location = f"/v1/referrals/{accepted.referral_id}"
    response.headers["Location"] = location
    return ReferralAccepted(
        id=accepted.referral_id,
        routed=accepted.routed,
        status_url=f"{state.settings.api_url}{location}",
    )


@router.get("/{referral_id}", response_model=ReferralView, responses={401: {}, 403: {}, 404: {}})
async def get_referral(referral_id: str, state: StateDep, principal: PrincipalDep) -> ReferralView:
    """Per-agency delivery and enrollment status, information requests and timeline (no
    personal data).

    ``due`` (and each ``agencies[].due``) is the agencies' answer deadline: the 10th working
    day after the Athens date of the submission. ``overdue`` is the information duty: true
    while an information request is open (unanswered) past the end of its due day, Athens
    time. It no longer follows the agencies' statuses: the law's clock starts when the
    person asks, and an agency's answer does not inform the person; a request answered late
    stays ``overdue`` in its own entry but no longer makes the referral overdue."""
    async with state.db.sessions() as session:
        referral = await session.get(ReferralRow, referral_id)
        if referral is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such referral")
        if principal.kind != "operator" and not (
            principal.kind == "centre" and principal.id == referral.centre
        ):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "not your referral")
        deliveries = (
            (
                await session.execute(
                    select(DeliveryRow)
                    .where(DeliveryRow.referral_id == referral_id)
                    .order_by(DeliveryRow.id)
                )
            )
            .scalars()
            .all()
        )
        timeline = (
            (
                await session.execute(
                    select(TimelineRow)
                    .where(TimelineRow.referral_id == referral_id)
                    .order_by(TimelineRow.at, TimelineRow.id)
                )
            )
            .scalars()
            .all()
        )
        requests = await requests_of(session, referral_id)
    now = datetime.now(UTC)
    information_requests = [view(row, now) for row in requests]
    agencies = [
        AgencyView(
            agency=row.agency,
            delivery=DeliveryState(row.delivery),
            attempts=row.attempts,
            status=EnrollmentStatus(row.status) if row.status else None,
            reference=row.reference,
            due=referral.due,
            delivered_at=row.delivered_at,
            error_class=row.error_class,
        )
        for row in deliveries
    ]
    return ReferralView(
        id=referral.id,
        centre=referral.centre,
        created_at=referral.created_at,
        due=referral.due,
        overdue=any(r.overdue and r.answered_at is None for r in information_requests),
        agencies=agencies,
        information_requests=information_requests,
        timeline=[
            TimelineEntry(at=t.at, kind=t.kind, agency=t.agency, detail=t.detail) for t in timeline
        ],
    )
