"""CloudEvents ``data`` payloads and their type and topic names.

The envelope (id, source, time, headers) is built by the bus; these models are only what goes in
``data``, so one model per event type and one place that says which model a type carries.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from schemas.base import AgencyReference, CanonicalModel, CentreCode, ReferralId, Slug
from schemas.codes import EnrollmentStatus, ProgrammeCode, WithdrawalReason
from schemas.referral import Referral

REFERRAL_SUBMITTED: Final = "gr.kk.referral.submitted.v1"
REFERRAL_WITHDRAWN: Final = "gr.kk.referral.withdrawn.v1"
DELIVERY_SUCCEEDED: Final = "gr.kk.delivery.succeeded.v1"
DELIVERY_FAILED: Final = "gr.kk.delivery.failed.v1"
WITHDRAWAL_ACKNOWLEDGED: Final = "gr.kk.withdrawal.acknowledged.v1"
WITHDRAWAL_FAILED: Final = "gr.kk.withdrawal.failed.v1"
STATUS_CHANGED: Final = "gr.kk.enrollment.status_changed.v1"

TOPIC_REFERRALS: Final = "kk.referrals.v1"
TOPIC_DELIVERIES: Final = "kk.deliveries.v1"
TOPIC_STATUS: Final = "kk.status.v1"


class ReferralSubmitted(CanonicalModel):
    """A centre referred a citizen; carries the whole canonical referral and its routed list."""

    referral: Referral


EventId = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class ReferralWithdrawn(CanonicalModel):
    """A referral withdrawn, whole or some of its programmes; every agency in ``agencies``
    must be told, in its own protocol. Ids and codes only: an agency finds the referral by
    the idempotency key of the delivery it was sent (derived from ``submitted_event_id``),
    even when that delivery has not reached it yet (docs/decisions/0019-withdrawal.md).

    The event's own id is the withdrawal's id; each agency's call carries the idempotency
    key derived from it."""

    referral_id: ReferralId
    centre: CentreCode
    agencies: Annotated[list[Slug], Field(min_length=1)]
    """The routed agencies handling at least one of ``programmes``."""
    programmes: Annotated[list[ProgrammeCode], Field(min_length=1)]
    """The programmes withdrawn by this withdrawal (the referral's own codes)."""
    complete_for: list[Slug]
    """Those of ``agencies`` left with none of the referral's programmes after it: their
    whole referral ends (the others only lose some programmes)."""
    reason: WithdrawalReason
    submitted_event_id: EventId
    """The ``referral.submitted`` event whose deliveries this withdrawal supersedes."""
    withdrawn_at: AwareDatetime


class DeliveryOutcome(CanonicalModel):
    """Outcome of delivering one event to one agency (``DELIVERY_SUCCEEDED`` or ``_FAILED``).

    ``error_message`` must already be redacted by the connector: it ends up in the read model.
    """

    referral_id: ReferralId
    agency: Slug
    succeeded: bool
    attempts: Annotated[int, Field(ge=1)]
    reference: AgencyReference | None = None
    error_class: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    error_message: Annotated[str, StringConstraints(max_length=500)] | None = None
    permanent: bool = False
    """True when retrying cannot help (the agency refused the delivery as it is)."""
    dead_lettered: bool = False
    """True when the delivery went to the dead-letter topic: terminal until replayed."""
    occurred_at: AwareDatetime
    submitted_event_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]

    @model_validator(mode="after")
    def _check_error_fields(self) -> DeliveryOutcome:
        if not self.succeeded and self.error_class is None:
            raise ValueError("a failed delivery must carry error_class")
        if self.succeeded and (self.error_class is not None or self.error_message is not None):
            raise ValueError("a successful delivery must not carry error_class or error_message")
        return self

    @property
    def event_type(self) -> str:
        """The CloudEvents type this outcome is published as."""
        return DELIVERY_SUCCEEDED if self.succeeded else DELIVERY_FAILED


class WithdrawalOutcome(DeliveryOutcome):
    """Outcome of telling one agency of one withdrawal (``WITHDRAWAL_ACKNOWLEDGED`` or
    ``_FAILED``), with the same retries and dead letters as a delivery's. ``reference`` is
    the agency's reference for the referral, None when the withdrawal reached it before
    the referral did (it then remembers the withdrawal and never activates the referral)."""

    withdrawal_id: EventId
    """The withdrawal event's id (``submitted_event_id`` stays the referral's event)."""

    @property
    def event_type(self) -> str:
        return WITHDRAWAL_ACKNOWLEDGED if self.succeeded else WITHDRAWAL_FAILED


class StatusChanged(CanonicalModel):
    """An agency's answer about a referral, pushed by the agency or read by a connector's poll."""

    referral_id: ReferralId
    agency: Slug
    status: EnrollmentStatus
    reference: AgencyReference | None = None
    occurred_at: AwareDatetime


class AgencyStatusUpdate(CanonicalModel):
    """The body an agency POSTs to ``/v1/agencies/{agency}/status`` (the agency is in the path)."""

    referral_id: ReferralId
    status: EnrollmentStatus
    reference: AgencyReference | None = None
    occurred_at: AwareDatetime


EVENT_MODELS: Final[dict[str, type[BaseModel]]] = {
    REFERRAL_SUBMITTED: ReferralSubmitted,
    REFERRAL_WITHDRAWN: ReferralWithdrawn,
    DELIVERY_SUCCEEDED: DeliveryOutcome,
    DELIVERY_FAILED: DeliveryOutcome,
    WITHDRAWAL_ACKNOWLEDGED: WithdrawalOutcome,
    WITHDRAWAL_FAILED: WithdrawalOutcome,
    STATUS_CHANGED: StatusChanged,
}
"""Which data model each CloudEvents type carries; consumers look the type up here."""

EVENT_TOPICS: Final[dict[str, str]] = {
    REFERRAL_SUBMITTED: TOPIC_REFERRALS,
    REFERRAL_WITHDRAWN: TOPIC_REFERRALS,
    DELIVERY_SUCCEEDED: TOPIC_DELIVERIES,
    DELIVERY_FAILED: TOPIC_DELIVERIES,
    WITHDRAWAL_ACKNOWLEDGED: TOPIC_DELIVERIES,
    WITHDRAWAL_FAILED: TOPIC_DELIVERIES,
    STATUS_CHANGED: TOPIC_STATUS,
}
"""The topic each event type is published on; the key is always referral_id."""
