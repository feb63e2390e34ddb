"""Operator endpoints: connector health and dead letters (``/v1/ops/*``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from hub.api.deps import OperatorDep, StateDep
from hub.db import DeadLetterRow, DeliveryRow
from hub.dlq import DeadLetter, ReplayError, get_dead_letter, list_dead_letters, replay, replay_many

router = APIRouter(prefix="/v1/ops", tags=["operations"])


@router.get("/connectors", responses={401: {}, 403: {}})
async def connectors(state: StateDep, _: OperatorDep) -> list[dict[str, Any]]:
    """Per agency: deliveries by state and open dead letters."""
    async with state.db.sessions() as session:
        counts = (
            await session.execute(
                select(DeliveryRow.agency, DeliveryRow.delivery, func.count()).group_by(
                    DeliveryRow.agency, DeliveryRow.delivery
                )
            )
        ).all()
        dead = dict(
            (
                await session.execute(
                    select(DeadLetterRow.agency, func.count())
                    .where(DeadLetterRow.replayed_at.is_(None))
                    .group_by(DeadLetterRow.agency)
                )
            ).all()
        )
    by_agency: dict[str, dict[str, int]] = {}
    for agency, delivery, count in counts:
        by_agency.setdefault(agency, {})[delivery] = count
    return [
        {
            "agency": agency.id,
            "family": agency.family,
            "active": agency.active,
            "deliveries": by_agency.get(agency.id, {}),
            "open_dead_letters": dead.get(agency.id, 0),
        }
        for agency in state.registry.agencies.values()
    ]


@router.get("/dlq", response_model=list[DeadLetter], responses={401: {}, 403: {}})
async def dead_letters(
    state: StateDep,
    _: OperatorDep,
    agency: str | None = None,
    error_class: str | None = None,
    include_replayed: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetter]:
    return await list_dead_letters(
        state.db,
        agency=agency,
        error_class=error_class,
        include_replayed=include_replayed,
        limit=limit,
    )


@router.get("/dlq/{dead_letter_id}", response_model=DeadLetter, responses={404: {}})
async def dead_letter(dead_letter_id: int, state: StateDep, _: OperatorDep) -> DeadLetter:
    found = await get_dead_letter(state.db, dead_letter_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such dead letter")
    return found


@router.post(
    "/dlq/{dead_letter_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeadLetter,
    responses={404: {}, 409: {}},
)
async def replay_one(dead_letter_id: int, state: StateDep, operator: OperatorDep) -> DeadLetter:
    """Redeliver one dead letter to its agency (same event id, so the same idempotency key)."""
    try:
        replayed = await replay(state.db, dead_letter_id, operator.id)
    except ReplayError as exc:
        code = status.HTTP_404_NOT_FOUND if "no dead letter" in str(exc) else 409
        raise HTTPException(code, str(exc)) from None
    state.wake_relay()
    return replayed


class ReplayFilter(BaseModel):
    agency: str | None = None
    error_class: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)


@router.post("/dlq/replay", status_code=status.HTTP_202_ACCEPTED, responses={401: {}, 403: {}})
async def replay_matching(
    body: ReplayFilter, state: StateDep, operator: OperatorDep
) -> dict[str, list[int]]:
    """Replay every open dead letter of an agency and/or error class, rate-capped."""
    done = await replay_many(
        state.db,
        operator.id,
        agency=body.agency,
        error_class=body.error_class,
        limit=body.limit,
        rate_per_s=state.settings.replay_rate_per_s,
    )
    state.wake_relay()
    return {"replayed": done}
