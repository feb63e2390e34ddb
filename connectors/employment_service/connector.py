"""The employment service (ΔΥΠΑ) connector: REST/JSON with OAuth2 client credentials.

The agency deduplicates by ``Idempotency-Key`` itself, so a repeat is safe to send.
"""

from __future__ import annotations

import aiohttp

from connectors.employment_service.client import EmploymentServiceClient
from diasyndesi_sdk.connector import AgencyConnection, Connector, Delivery, Receipt
from diasyndesi_sdk.http import http_session
from schemas.codes import EnrollmentStatus


class EmploymentServiceConnector(Connector):
    family = "employment_service"

    def __init__(
        self, agency: str, connection: AgencyConnection, *, max_connections: int = 64
    ) -> None:
        super().__init__(agency, connection, max_connections=max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._client: EmploymentServiceClient | None = None

    async def start(self) -> None:
        self._session = http_session(self.max_connections)
        self._client = EmploymentServiceClient(
            self.connection.base_url,
            self.connection.username or "diasyndesi",
            self.connection.secret.get_secret_value(),
            timeout_s=self.connection.timeout_s,
            session=self._session,
        )

    async def deliver(self, delivery: Delivery) -> Receipt:
        assert self._client is not None, "deliver() before start()"
        registration = await self._client.register(delivery.payload, delivery.idempotency_key)
        status = (
            EnrollmentStatus(registration.status)
            if registration.status in EnrollmentStatus.__members__.values()
            else None
        )
        return Receipt(
            reference=registration.registration_number,
            status=status,
            duplicate=registration.duplicate,
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
