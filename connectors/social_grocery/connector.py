"""The social grocery connector: REST/JSON with an API key (``connection.secret``).

The grocery deduplicates by ``Idempotency-Key`` itself, so a repeat is safe to send. It
decides at intake: a free place gives ``accepted``, a full grocery ``waitlisted`` — a
normal answer, not a failure. Its system takes Latin characters only; the hub's mapping
transliterates names and addresses (ELOT 743) before the payload reaches this connector.
"""

from __future__ import annotations

import aiohttp

from connectors.social_grocery.client import SocialGroceryClient
from diasyndesi_sdk.connector import Delivery, Receipt, RetryableError, Withdrawal, Withdraws
from diasyndesi_sdk.errors import ConfigurationError
from diasyndesi_sdk.pooled import PooledConnector
from schemas.codes import EnrollmentStatus

# The grocery's answers in the hub's vocabulary; anything else leaves the status unknown.
STATUSES = {
    "received": EnrollmentStatus.RECEIVED,
    "accepted": EnrollmentStatus.ACCEPTED,
    "waitlisted": EnrollmentStatus.WAITLISTED,
    "rejected": EnrollmentStatus.REJECTED,
    "withdrawn": EnrollmentStatus.WITHDRAWN,
}


class SocialGroceryConnector(PooledConnector[SocialGroceryClient], Withdraws):
    family = "social_grocery"

    def check(self) -> None:
        if not self.connection.base_url or not self.connection.secret.get_secret_value():
            raise ConfigurationError(f"{self.agency}: base_url and secret (API key) are required")

    def make_client(self, session: aiohttp.ClientSession) -> SocialGroceryClient:
        return SocialGroceryClient(
            self.connection.base_url,
            self.connection.secret.get_secret_value(),
            timeout_s=self.connection.timeout_s,
            session=session,
        )

    async def deliver(self, delivery: Delivery) -> Receipt:
        intake = await self.client.refer_household(delivery.payload, delivery.idempotency_key)
        if intake.case_id is None:  # refused by the client; for the type checker
            raise RetryableError(
                "refer_household: malformed answer", error_class="malformed_response"
            )
        return Receipt(
            reference=intake.case_id,
            status=STATUSES.get(intake.status),
            duplicate=intake.duplicate,
        )

    async def withdraw(self, withdrawal: Withdrawal) -> Receipt:
        """The grocery's cancellation, by the key the household was (or will be) referred
        with."""
        cancelled = await self.client.cancel_case(
            withdrawal.delivery_key,
            withdrawal.referral_id,
            list(withdrawal.programmes),
            whole=withdrawal.whole,
            reason=withdrawal.reason,
            idempotency_key=withdrawal.idempotency_key,
        )
        return Receipt(
            reference=cancelled.case_id,
            status=STATUSES.get(cancelled.status),
            duplicate=cancelled.duplicate,
        )
