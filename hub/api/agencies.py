"""Agency-facing and registry endpoints: status push, agencies, programmes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel
from sqlalchemy import select

from hub.api.deps import PrincipalDep, StateDep
from hub.db import DeliveryRow
from hub.events import encode, new_event_id
from hub.outbox import add_outbox
from schemas.events import STATUS_CHANGED, TOPIC_STATUS, AgencyStatusUpdate, StatusChanged

router = APIRouter(prefix="/v1", tags=["agencies"])


class StatusAccepted(BaseModel):
    event_id: str


@router.post(
    "/agencies/{agency}/status",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StatusAccepted,
    responses={401: {}, 403: {}, 404: {}, 422: {}},
)
async def push_status(
    agency: str, body: AgencyStatusUpdate, state: StateDep, principal: PrincipalDep
) -> StatusAccepted:
    """An agency reports its answer; only that agency, only for referrals routed to it.

    The update becomes a ``status_changed`` event through the outbox, so Kafka consumers
    and the read model see the same history.
    """
    if principal.kind != "agency" or principal.id != agency:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only that agency may report its status")
    event = StatusChanged(
        referral_id=body.referral_id,
        agency=agency,
        status=body.status,
        reference=body.reference,
        occurred_at=body.occurred_at,
    )
    event_id = new_event_id()
    async with state.db.transaction() as session:
        routed = (
            await session.execute(
                select(DeliveryRow.id).where(
                    DeliveryRow.referral_id == body.referral_id, DeliveryRow.agency == agency
                )
            )
        ).scalar_one_or_none()
        if routed is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no referral routed to this agency")
        record = encode(
            TOPIC_STATUS, STATUS_CHANGED, event, key=body.referral_id, event_id=event_id
        )
        add_outbox(session, record, event_id, STATUS_CHANGED, body.referral_id)
    state.wake_relay()
    return StatusAccepted(event_id=event_id)


@router.get("/agencies", responses={401: {}})
async def list_agencies(state: StateDep, _: PrincipalDep) -> list[dict[str, Any]]:
    return [agency.model_dump(mode="json") for agency in state.registry.agencies.values()]


@router.get("/programmes", responses={401: {}})
async def list_programmes(state: StateDep, _: PrincipalDep) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json") for p in state.registry.programmes.values()]
