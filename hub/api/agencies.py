"""Agency-facing and registry endpoints: status push, agencies, programmes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from diasyndesi_sdk.webhooks import SECRET_PREFIX, WebhookError, verify
from hub.api.deps import HubState, PrincipalDep, StateDep, get_principal
from hub.api.status_writer import NotRouted, StatusPush, WebhookIdReused
from hub.events import encode, new_event_id
from schemas.events import STATUS_CHANGED, TOPIC_STATUS, AgencyStatusUpdate, StatusChanged

router = APIRouter(prefix="/v1", tags=["agencies"])


class StatusAccepted(BaseModel):
    event_id: str


@router.post(
    "/agencies/{agency}/status",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StatusAccepted,
    responses={401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 422: {}},
    openapi_extra={
        # Read from the request rather than declared (see the docstring), documented here.
        "parameters": [
            {
                "name": "authorization",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "Bearer token of the agency (not with a webhook signature)",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": AgencyStatusUpdate.model_json_schema()}},
        },
    },
)
async def push_status(agency: str, request: Request) -> JSONResponse:
    """An agency reports its answer; only that agency, only for referrals routed to it.

    Two ways to prove who is calling: the agency's bearer token, or (municipal social
    services) a Standard Webhooks signature with the agency's shared secret, whose message
    id is remembered so a replay is absorbed. The update becomes a ``status_changed`` event
    through the outbox, so Kafka consumers and the read model see the same history.

    Six of every seven requests a four-agency referral brings are these pushes, so this
    route takes no FastAPI dependencies (state and header are read from the request) and
    answers with a ready response: that halves FastAPI's own work per push (profiled).
    """
    state: HubState = request.app.state.hub
    authorization = request.headers.get("authorization")
    try:
        raw = await request.body()
    except ClientDisconnect:  # the agency gave up mid-request and will retry
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "client disconnected") from None
    message_id: str | None = None
    if "webhook-signature" in request.headers:
        message_id = _verify_signature(state, agency, request.headers, raw)
    else:
        principal = await get_principal(state, authorization)
        if principal.kind != "agency" or principal.id != agency:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only that agency may report its status")
    try:
        body = AgencyStatusUpdate.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        ) from None
    event = StatusChanged(
        referral_id=body.referral_id,
        agency=agency,
        status=body.status,
        reference=body.reference,
        occurred_at=body.occurred_at,
    )
    event_id = new_event_id()
    record = encode(TOPIC_STATUS, STATUS_CHANGED, event, key=body.referral_id, event_id=event_id)
    push = StatusPush(agency, body.referral_id, event_id, record, message_id, raw)
    try:
        event_id, replayed = await state.status_writer.write(push)
    except NotRouted:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "no referral routed to this agency"
        ) from None
    except WebhookIdReused:
        _count_refusal(state, agency, "replayed_id_other_body")
        raise HTTPException(
            status.HTTP_409_CONFLICT, "webhook-id already used with another body"
        ) from None
    if replayed:
        _count_refusal(state, agency, "replay_absorbed")
    else:
        state.wake_relay()
    return JSONResponse({"event_id": event_id}, status_code=status.HTTP_202_ACCEPTED)


def _count_refusal(state: HubState, agency: str, reason: str) -> None:
    label = agency if agency in state.registry.agencies else "unknown"
    state.metrics.inbound_status_refused.labels(label, reason).inc()


def _verify_signature(state: HubState, agency: str, headers: Mapping[str, str], raw: bytes) -> str:
    connection = state.settings.agencies.get(agency)
    secret = connection.secret.get_secret_value() if connection else ""
    if not secret.startswith(SECRET_PREFIX):
        _count_refusal(state, agency, "unsigned_agency")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "this agency does not sign its calls")
    try:
        return verify(secret, headers, raw)
    except WebhookError as exc:
        _count_refusal(state, agency, exc.reason)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"signature refused: {exc.reason}"
        ) from None


@router.get("/agencies", responses={401: {}})
async def list_agencies(state: StateDep, _: PrincipalDep) -> list[dict[str, Any]]:
    return [agency.model_dump(mode="json") for agency in state.registry.agencies.values()]


@router.get("/programmes", responses={401: {}})
async def list_programmes(state: StateDep, _: PrincipalDep) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json") for p in state.registry.programmes.values()]
