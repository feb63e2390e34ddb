"""The information duty: a beneficiary asks the centre how their requests stand,
and the centre must tell them within ten working days.

``InformationRequestNew`` is what a centre records (``POST
/v1/referrals/{id}/information-requests``), ``InformationRequestAnswer`` how it closes one,
``InformationRequest`` what the hub shows. Times must carry their offset: the due date is
counted from the Athens date of the request, which a naive time does not name. The answer's
summary is free text that may hold personal data: it is stored, never shown in these views
and never logged.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from pydantic import AwareDatetime, Field, StringConstraints, field_validator

from schemas.base import UUID_PATTERN, CanonicalModel, ReferralId
from schemas.codes import InformationChannel

CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a reported time may be: the centre's clock may run a little fast."""
SUMMARY_MAX_LENGTH = 2000


def _not_future(value: datetime, field: str) -> datetime:
    if value > datetime.now(UTC) + CLOCK_SKEW:
        raise ValueError(f"{field} must not be in the future")
    return value


class InformationRequestNew(CanonicalModel):
    """A beneficiary asked to be informed: when (with its offset) and how. A time before the
    referral's submission is accepted: centres record requests first made on paper."""

    requested_at: AwareDatetime
    channel: InformationChannel

    @field_validator("requested_at")
    @classmethod
    def _check_not_future(cls, value: datetime) -> datetime:
        return _not_future(value, "requested_at")


class InformationRequestAnswer(CanonicalModel):
    """The centre informed the beneficiary: when, and optionally what it told them."""

    answered_at: AwareDatetime
    summary: Annotated[str, StringConstraints(max_length=SUMMARY_MAX_LENGTH)] | None = Field(
        default=None,
        description="free text, may hold personal data: stored, never shown in a view or logged",
    )

    @field_validator("answered_at")
    @classmethod
    def _check_not_future(cls, value: datetime) -> datetime:
        return _not_future(value, "answered_at")


class InformationRequest(CanonicalModel):
    """One information request as the hub shows it (no personal data)."""

    id: Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
    referral_id: ReferralId
    requested_at: AwareDatetime
    channel: InformationChannel
    due: date = Field(
        description="the 10th working day after the Athens date of requested_at, at the centre"
    )
    answered_at: AwareDatetime | None
    overdue: bool = Field(description="not answered by the end of the due day, Athens time")
