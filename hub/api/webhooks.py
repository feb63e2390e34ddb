"""Centres' webhook subscriptions (``/v1/centres/{centre}/webhooks``) and the operators' view
of the calls (``/v1/ops/webhook-deliveries``).

A subscription names a URL and the centre event types it wants; the answer to its creation
is the only time its ``whsec_`` secret is shown (stored encrypted, ``hub/webhook_secrets.py``).
Removing it cancels the calls still owed to it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update

from diasyndesi_sdk.webhooks import new_secret
from hub.api.centre_events import check_centre
from hub.api.deps import OperatorDep, PrincipalDep, StateDep
from hub.api.referrals import field_error
from hub.db import WebhookDeliveryRow, WebhookRow
from hub.logs import get_logger
from hub.webhook_secrets import RefusedAddress, check_resolves_public, check_url, seal, secret_key

log = get_logger(__name__)
router = APIRouter(tags=["push to centres"])

EventType = Literal[
    "referral.delivered",
    "referral.status_changed",
    "referral.dead_lettered",
    "referral.withdrawn",
    "referral.received",
    "information_request.overdue",
]
MAX_WEBHOOKS_PER_CENTRE = 20


class WebhookNew(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=2048)]
    events: Annotated[list[EventType], Field(min_length=1, max_length=6)]


class Webhook(BaseModel):
    id: str
    url: str
    events: list[EventType]
    created_at: AwareDatetime


class WebhookCreated(Webhook):
    secret: str
    """``whsec_…``: shown once; verify each call's ``webhook-signature`` with it."""


class WebhookDelivery(BaseModel):
    id: int
    webhook_id: str
    centre: str
    event_id: int
    type: str
    referral_id: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: AwareDatetime
    created_at: AwareDatetime
    updated_at: AwareDatetime


@router.post(
    "/v1/centres/{centre}/webhooks",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses={401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 422: {}, 503: {}},
)
async def create_webhook(
    centre: str, body: WebhookNew, state: StateDep, principal: PrincipalDep
) -> WebhookCreated:
    """Subscribe ``url`` to ``events``; each call is signed per Standard Webhooks with the
    secret in this answer (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)."""
    check_centre(state, principal, centre)
    production = state.settings.environment == "production"
    try:
        host = check_url(body.url, production)
        if production:
            await check_resolves_public(host, urlsplit(body.url).port)
    except RefusedAddress as exc:
        raise field_error("url", str(exc), "refused_url") from None
    key = secret_key(state.settings)
    if key is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "webhooks need WEBHOOK_SECRET_KEY set on the hub",
        )
    webhook_id = str(uuid.uuid4())
    secret = new_secret()
    events = list(dict.fromkeys(body.events))
    now = datetime.now(UTC)
    async with state.db.transaction() as session:
        count = len(
            (await session.execute(select(WebhookRow.id).where(WebhookRow.centre == centre))).all()
        )
        if count >= MAX_WEBHOOKS_PER_CENTRE:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"a centre may have {MAX_WEBHOOKS_PER_CENTRE} webhooks; remove one first",
            )
        session.add(
            WebhookRow(
                id=webhook_id,
                centre=centre,
                url=body.url,
                events=events,
                secret=seal(key, webhook_id, secret),
                created_at=now,
            )
        )
    log.info("webhook registered", centre=centre, webhook_id=webhook_id, events=len(events))
    return WebhookCreated(id=webhook_id, url=body.url, events=events, created_at=now, secret=secret)


@router.get(
    "/v1/centres/{centre}/webhooks",
    response_model=list[Webhook],
    responses={401: {}, 403: {}, 404: {}},
)
async def list_webhooks(centre: str, state: StateDep, principal: PrincipalDep) -> list[Webhook]:
    """The centre's subscriptions, oldest first (never their secrets)."""
    check_centre(state, principal, centre)
    async with state.db.sessions() as session:
        rows = (
            await session.execute(
                select(WebhookRow)
                .where(WebhookRow.centre == centre)
                .order_by(WebhookRow.created_at, WebhookRow.id)
            )
        ).scalars()
        return [Webhook(id=r.id, url=r.url, events=r.events, created_at=r.created_at) for r in rows]


@router.delete(
    "/v1/centres/{centre}/webhooks/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={401: {}, 403: {}, 404: {}},
)
async def delete_webhook(
    centre: str, webhook_id: str, state: StateDep, principal: PrincipalDep
) -> Response:
    """Remove a subscription; calls still owed to it are cancelled."""
    check_centre(state, principal, centre)
    now = datetime.now(UTC)
    async with state.db.transaction() as session:
        removed = await session.execute(
            delete(WebhookRow).where(WebhookRow.id == webhook_id, WebhookRow.centre == centre)
        )
        if not removed.rowcount:  # type: ignore[attr-defined]
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such webhook of this centre")
        await session.execute(
            update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.webhook_id == webhook_id,
                WebhookDeliveryRow.state == "pending",
            )
            .values(state="cancelled", updated_at=now, claimed_by=None, claimed_until=None)
        )
    log.info("webhook removed", centre=centre, webhook_id=webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/v1/ops/webhook-deliveries",
    response_model=list[WebhookDelivery],
    responses={401: {}, 403: {}, 422: {}},
    tags=["operations"],
)
async def webhook_deliveries(
    state: StateDep,
    _: OperatorDep,
    delivery_state: Annotated[
        Literal["pending", "delivered", "dead_lettered", "cancelled"] | None,
        Query(alias="state"),
    ] = None,
    centre: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[WebhookDelivery]:
    """Webhook calls, newest first: ``state=dead_lettered`` lists those given up on after
    the retry window (with the last HTTP status or error class)."""
    query = select(WebhookDeliveryRow).order_by(WebhookDeliveryRow.id.desc()).limit(limit)
    if delivery_state is not None:
        query = query.where(WebhookDeliveryRow.state == delivery_state)
    if centre is not None:
        query = query.where(WebhookDeliveryRow.centre == centre)
    async with state.db.sessions() as session:
        rows = (await session.execute(query)).scalars()
        return [WebhookDelivery.model_validate(row, from_attributes=True) for row in rows]
