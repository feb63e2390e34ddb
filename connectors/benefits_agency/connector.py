"""The benefits agency (ΟΠΕΚΑ) connector: SOAP 1.2, WS-Security UsernameToken, polled status,
withdrawal through the WSDL's ``WithdrawApplication``.

ΟΠΕΚΑ cannot push status, so the hub polls ``status_of``. Idempotency is check-then-act:
before submitting, the connector asks for the status of its ``hubReference`` and returns
the existing protocol number instead of submitting twice. (Not atomic, but the hub never
runs two deliveries of one referral at once: they share a partition key.)
"""

from __future__ import annotations

import aiohttp

from connectors.benefits_agency.client import BenefitsAgencyClient
from diasyndesi_sdk.connector import (
    Delivery,
    PollsStatus,
    Receipt,
    RetryableError,
    StatusReport,
    Withdrawal,
    Withdraws,
)
from diasyndesi_sdk.pooled import PooledConnector
from schemas.codes import EnrollmentStatus

# ΟΠΕΚΑ's status codes (WSDL type Katastasi) in the hub's vocabulary.
STATUSES: dict[str, EnrollmentStatus] = {
    "KATAXORITHIKE": EnrollmentStatus.RECEIVED,
    "SE_ELEGXO": EnrollmentStatus.UNDER_REVIEW,
    "ANAMONI_DIKAIOLOGITIKON": EnrollmentStatus.NEEDS_DOCUMENTS,
    "EGKRITHIKE": EnrollmentStatus.ACCEPTED,
    "APORRIFTHIKE": EnrollmentStatus.REJECTED,
    "ANAKLITHIKE": EnrollmentStatus.WITHDRAWN,
}
# The hub's withdrawal reasons in ΟΠΕΚΑ's words (WSDL type AitiaAnaklisis).
REASONS: dict[str, str] = {
    "consent_withdrawn": "ANAKLISI_SYNAINESIS",
    "beneficiary_request": "AITIMA_OFELOUMENOU",
    "duplicate": "DIPLOTYPI_PARAPOMPI",
    "error": "SFALMA",
}


class BenefitsAgencyConnector(PooledConnector[BenefitsAgencyClient], PollsStatus, Withdraws):
    """``connection.base_url`` is the SOAP endpoint (it overrides the WSDL's address);
    ``username``/``secret`` are the WS-Security credentials."""

    family = "benefits_agency"

    def make_client(self, session: aiohttp.ClientSession) -> BenefitsAgencyClient:
        """The zeep client, built once: it parses the vendored WSDL synchronously (~ms)."""
        return self.username_client(BenefitsAgencyClient, session)

    async def deliver(self, delivery: Delivery) -> Receipt:
        known = await self.client.application_status(hub_reference=delivery.idempotency_key)
        if known is not None:
            return Receipt(
                reference=known.arithmos_protokollou,
                status=STATUSES.get(known.katastasi),
                duplicate=True,
            )
        protocol = await self.client.submit_application_support(
            delivery.idempotency_key, delivery.payload
        )
        return Receipt(
            reference=protocol.arithmos_protokollou,
            status=STATUSES.get(protocol.katastasi),
            duplicate=protocol.diplotypo,
        )

    async def withdraw(self, withdrawal: Withdrawal) -> Receipt:
        """``WithdrawApplication`` by the ``hubReference`` the application was (or will be)
        submitted with, the delivery's idempotency key."""
        answer = await self.client.withdraw_application(
            withdrawal.idempotency_key,
            withdrawal.delivery_key,
            withdrawal.referral_id,
            aitia=REASONS[withdrawal.reason],
            olokliri=withdrawal.whole,
            programmata=list(withdrawal.programmes),
        )
        return Receipt(
            reference=answer.arithmos_protokollou,
            status=STATUSES.get(answer.katastasi or ""),
            duplicate=answer.diplotypo,
        )

    async def status_of(self, reference: str) -> StatusReport | None:
        """``reference`` is ΟΠΕΚΑ's protocol number, as returned in the Receipt."""
        found = await self.client.application_status(arithmos_protokollou=reference)
        if found is None:
            return None
        status = STATUSES.get(found.katastasi)
        if status is None:
            raise RetryableError("status: unknown agency status code", error_class="unknown_status")
        return StatusReport(status=status, reference=found.arithmos_protokollou)
