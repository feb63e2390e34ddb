"""The employment service (ΔΥΠΑ) connector: REST/JSON with OAuth2 client credentials.

The agency deduplicates by ``Idempotency-Key`` itself, so a repeat is safe to send.
"""

from __future__ import annotations

import aiohttp

from connectors.employment_service.client import EmploymentServiceClient
from diasyndesi_sdk.connector import Delivery, Receipt, RetryableError, Withdrawal, Withdraws
from diasyndesi_sdk.pooled import PooledConnector, enrollment_status


class EmploymentServiceConnector(PooledConnector[EmploymentServiceClient], Withdraws):
    family = "employment_service"

    def make_client(self, session: aiohttp.ClientSession) -> EmploymentServiceClient:
        return self.username_client(EmploymentServiceClient, session)

    async def deliver(self, delivery: Delivery) -> Receipt:
        registration = await self.client.register(delivery.payload, delivery.idempotency_key)
        if registration.registration_number is None:  # refused by the client; for mypy
            raise RetryableError("register: malformed answer", error_class="malformed_response")
        return Receipt(
            reference=registration.registration_number,
            status=enrollment_status(registration.status),
            duplicate=registration.duplicate,
        )

    async def withdraw(self, withdrawal: Withdrawal) -> Receipt:
        """ΔΥΠΑ's withdrawal, by the key the registration was (or will be) sent with."""
        withdrawn = await self.client.withdraw_registration(
            withdrawal.delivery_key,
            withdrawal.referral_id,
            list(withdrawal.programmes),
            whole=withdrawal.whole,
            reason=withdrawal.reason,
            idempotency_key=withdrawal.idempotency_key,
        )
        return Receipt(
            reference=withdrawn.registration_number,
            status=enrollment_status(withdrawn.status),
            duplicate=withdrawn.duplicate,
        )
