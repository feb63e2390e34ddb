"""Referral intake and read model: ``POST /v1/referrals``, ``GET /v1/referrals/{id}`` and
the caseload, ``GET /v1/referrals`` (who sees what, filters and pages: ``hub/caseload.py``)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response, status
from pydantic import AwareDatetime, BaseModel

from hub import caseload
from hub.api.deps import HubState, PrincipalDep, StateDep
from hub.caseload import DEFAULT_LIMIT, MAX_LIMIT, BadCursor, CaseloadFilter, Details
from hub.db import ReferralRow
from hub.errors import RoutingError
from hub.information_requests import view
from hub.outbox import IdempotencyConflict, accept_referral
from schemas.codes import DeliveryState, EnrollmentStatus, ProgrammeCode
from schemas.information_request import InformationRequest
from schemas.referral import ReferralRequest

router = APIRouter(prefix="/v1/referrals", tags=["referrals"])


class ReferralAccepted(BaseModel):
    id: str
    routed: list[str]
    status_url: str
    municipality: str
    """The municipality it was routed by: the beneficiary's municipality of residence when
    the address names one the registry knows, else the centre's."""


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
    origin: str
    """Who referred: the centre's code, or the id of the agency that referred the person."""
    created_at: datetime
    due: date
    overdue: bool
    agencies: list[AgencyView]
    information_requests: list[InformationRequest]
    timeline: list[TimelineEntry]


class CaseloadPage(BaseModel):
    items: list[ReferralView]
    next_cursor: str | None
    """Pass as ``cursor`` for the next page, with the same filters; null on the last page."""


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
    """Accept a referral once; it is stored with its outbox record before this answers.

    A centre submits its own referrals. An agency may refer a person too: ``centre`` is the
    centre responsible for the person (it owns the referral, and sees it in its caseload),
    ``caseworker`` the agency's officer; the referral's ``origin`` is the agency, which is
    never routed to itself (a programme only it handles there: 422 naming
    ``programmes.N``). Idempotency-Keys are per origin (centre or agency). Routing follows
    the beneficiary's municipality of residence when the address names one the registry
    knows, else the centre's; ``municipality`` in the answer names the one used."""
    if principal.kind not in ("centre", "agency"):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "only a centre or an agency may submit referrals"
        )
    if body.centre not in state.registry.centres:
        state.metrics.intake_rejected.labels("unknown_centre").inc()
        raise field_error("centre", "unknown centre", "unknown_centre")
    if principal.kind == "centre" and body.centre != principal.id:
        state.metrics.intake_rejected.labels("other_centre").inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a centre may submit only its own referrals")
    try:
        accepted = await accept_referral(state.db, state.registry, body, key, principal.id)
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
        municipality=accepted.municipality,
    )


@router.get("", response_model=CaseloadPage, responses={401: {}, 403: {}, 422: {}})
async def list_referrals(
    state: StateDep,
    principal: PrincipalDep,
    centre: Annotated[str | None, Query(description="a centre's code (a centre: its own)")] = None,
    agency: Annotated[str | None, Query(description="routed to this agency")] = None,
    programme: Annotated[ProgrammeCode | None, Query(description="asked for it")] = None,
    enrollment: Annotated[
        EnrollmentStatus | None, Query(alias="status", description="an agency's status")
    ] = None,
    delivery: Annotated[
        DeliveryState | None, Query(description="the delivery to an agency is in this state")
    ] = None,
    origin: Annotated[str | None, Query(description="referred by this centre or agency")] = None,
    overdue: Annotated[bool | None, Query(description="as the view's `overdue`")] = None,
    updated_since: Annotated[
        AwareDatetime | None,
        Query(description="a delivery or status changed at or after it (ISO 8601 with offset)"),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> CaseloadPage:
    """The caseload, newest first: the referrals this principal may see (a centre its own,
    an agency those it made or was routed to, an operator all), each as
    ``GET /v1/referrals/{id}`` shows it. Filters combine with AND; ``agency``, ``status`` and
    ``delivery`` describe one and the same agency's delivery."""
    if principal.kind == "centre":
        if centre is not None and centre != principal.id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a centre sees only its own referrals")
        centre = principal.id
    _known(state, centre=centre, agency=agency, origin=origin)
    wanted = CaseloadFilter(
        centre=centre,
        agency=agency,
        programme=programme,
        status=enrollment,
        delivery=delivery,
        origin=origin,
        overdue=overdue,
        updated_since=updated_since.astimezone(UTC) if updated_since else None,
    )
    try:
        after = caseload.decode_cursor(cursor, principal, wanted) if cursor else None
    except BadCursor as exc:
        raise field_error("cursor", str(exc), "invalid_cursor", "query") from None
    where = caseload.conditions(wanted, principal, state.registry)
    async with state.db.sessions() as session:
        found = await caseload.page(session, where, after, limit)
        details = await caseload.details(session, principal, [r.id for r, _ in found.rows])
    return CaseloadPage(
        items=[_view(referral, late, details) for referral, late in found.rows],
        next_cursor=(caseload.encode_cursor(principal, wanted, found.next) if found.next else None),
    )


def _known(state: HubState, *, centre: str | None, agency: str | None, origin: str | None) -> None:
    """Registry values, so that a typo is a 422 rather than an empty caseload."""
    registry = state.registry
    if centre is not None and centre not in registry.centres:
        raise field_error("centre", "unknown centre", "unknown_centre", "query")
    if agency is not None and agency not in registry.agencies:
        raise field_error("agency", "unknown agency", "unknown_agency", "query")
    if origin is not None and origin not in registry.centres and origin not in registry.agencies:
        raise field_error("origin", "neither a centre nor an agency", "unknown_origin", "query")


@router.get("/{referral_id}", response_model=ReferralView, responses={401: {}, 403: {}, 404: {}})
async def get_referral(referral_id: str, state: StateDep, principal: PrincipalDep) -> ReferralView:
    """Per-agency delivery and enrollment status, information requests and timeline (no
    personal data). An agency sees the referrals it made or was routed to, and of the
    latter only its own delivery and timeline entries (and no information requests: they
    are between the person and the centre).

    ``due`` (and each ``agencies[].due``) is the agencies' answer deadline: the 10th working
    day after the Athens date of the submission. ``overdue`` is the information duty
    (``hub/caseload.py::is_overdue``): true while an information request is open
    (unanswered) past the end of its due day, Athens time. It does not follow the agencies'
    statuses: the law's clock starts when the person asks, and an agency's answer does not
    inform the person; a request answered late stays ``overdue`` in its own entry but no
    longer makes the referral overdue."""
    async with state.db.sessions() as session:
        found = await caseload.one(session, referral_id, principal)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such referral")
        referral, late, visible = found
        if not visible:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "not your referral")
        details = await caseload.details(session, principal, [referral.id])
    return _view(referral, late, details)


def _view(referral: ReferralRow, late: bool, details: Details) -> ReferralView:
    return ReferralView(
        id=referral.id,
        centre=referral.centre,
        origin=referral.origin,
        created_at=referral.created_at,
        due=referral.due,
        overdue=late,
        information_requests=[
            view(row, details.now) for row in details.information_requests[referral.id]
        ],
        agencies=[
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
            for row in details.deliveries[referral.id]
        ],
        timeline=[
            TimelineEntry(at=t.at, kind=t.kind, agency=t.agency, detail=t.detail)
            for t in details.timeline[referral.id]
        ],
    )
