"""Withdrawal: ``POST /v1/referrals/{id}/withdraw`` and ``GET /v1/referrals/{id}/withdrawals``.

The owning centre, or the agency that referred the person (``origin``, decision 0021),
withdraws a referral, whole or some of its programmes; the hub records it with its outbox
record and answers 202, and each routed agency handling a withdrawn programme is told by its
connector (``hub/withdrawals.py``; docs/decisions/0019-withdrawal.md).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from hub.api.deps import PrincipalDep, StateDep
from hub.withdrawals import (
    AlreadyWithdrawn,
    NoSuchReferral,
    NotAllowed,
    NotInReferral,
    WithdrawalState,
    accept_withdrawal,
    withdrawal_state,
)
from schemas.codes import ProgrammeCode, WithdrawalReason

router = APIRouter(prefix="/v1/referrals", tags=["withdrawals"])


class WithdrawalRequest(BaseModel):
    """Why, and which programmes (all that are left when omitted)."""

    model_config = ConfigDict(extra="forbid")

    reason: WithdrawalReason
    programmes: list[ProgrammeCode] | None = None


class WithdrawalAccepted(BaseModel):
    id: str
    referral_id: str
    programmes: list[str]
    """What this withdrawal withdraws."""
    agencies: list[str]
    """The agencies told of it."""
    complete_for: list[str]
    """Those of them whose whole referral ends (their delivery becomes ``withdrawn``)."""
    status_url: str


class Conflict(BaseModel):
    detail: str
    state: WithdrawalState


def _refusal(exc: Exception) -> HTTPException:
    if isinstance(exc, NoSuchReferral):
        return HTTPException(status.HTTP_404_NOT_FOUND, "no such referral")
    return HTTPException(status.HTTP_403_FORBIDDEN, "not your referral")


@router.post(
    "/{referral_id}/withdraw",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WithdrawalAccepted,
    responses={401: {}, 403: {}, 404: {}, 409: {"model": Conflict}, 413: {}, 422: {}},
)
async def withdraw(
    referral_id: str, body: WithdrawalRequest, state: StateDep, principal: PrincipalDep
) -> WithdrawalAccepted | JSONResponse:
    """Withdraw a referral or some of its programmes; stored with its outbox record before
    this answers. A programme that is not the referral's: 422 naming ``programmes.N``;
    nothing named left to withdraw (withdrawn before): 409 with the current state."""
    try:
        accepted = await accept_withdrawal(
            state.db, state.registry, referral_id, principal, body.reason, body.programmes
        )
    except (NoSuchReferral, NotAllowed) as exc:
        raise _refusal(exc) from None
    except NotInReferral as exc:
        field = f"programmes.{exc.index}"
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [
                {
                    "loc": ["body", "programmes", exc.index],
                    "field": field,
                    "msg": "not a programme of this referral",
                    "type": "not_in_referral",
                }
            ],
        ) from None
    except AlreadyWithdrawn as exc:
        conflict = Conflict(detail="already withdrawn", state=exc.state)
        return JSONResponse(conflict.model_dump(mode="json"), status_code=status.HTTP_409_CONFLICT)
    state.wake_relay()
    return WithdrawalAccepted(
        id=accepted.id,
        referral_id=accepted.referral_id,
        programmes=accepted.programmes,
        agencies=accepted.agencies,
        complete_for=accepted.complete_for,
        status_url=f"{state.settings.api_url}/v1/referrals/{referral_id}/withdrawals",
    )


@router.get(
    "/{referral_id}/withdrawals",
    response_model=WithdrawalState,
    responses={401: {}, 403: {}, 404: {}},
)
async def withdrawals(
    referral_id: str, state: StateDep, principal: PrincipalDep
) -> WithdrawalState:
    """What is withdrawn and where each agency stands."""
    try:
        return await withdrawal_state(state.db, referral_id, principal)
    except (NoSuchReferral, NotAllowed) as exc:
        raise _refusal(exc) from None
