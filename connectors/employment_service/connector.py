"""The employment service (ΔΥΠΑ) connector: REST/JSON with OAuth2 client credentials.

The agency deduplicates by ``Idempotency-Key`` itself, so a repeat is safe to send.
"""

from __future__ import annotations

import aiohttp

from connectors.employment_service.client import EmploymentServiceClient
from diasyndesi_sdk.connector import Delivery, Receipt
from diasyndesi_sdk.pooled import PooledConnector, enrollment_status


class EmploymentServiceConnector(PooledConnector[EmploymentServiceClient]):
    family = "employment_service"

    def make_client(self, session: aiohttp.ClientSession) -> EmploymentServiceClient:
        return self.username_client(EmploymentServiceClient, session)

    async def deliver(self, delivery: Delivery) -> Receipt:
        registration = await self.client.register(delivery.payload, delivery.idempotency_key)
        return Receipt(
            reference=registration.registration_number,
            status=enrollment_status(registration.status),
            duplicate=registration.duplicate,
        )
