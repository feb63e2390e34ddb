"""The municipal social service connector: REST/JSON signed per Standard Webhooks.

``connection.base_url`` names one municipality (``http://host:8104/kozani-social-service``)
and ``connection.secret`` is its ``whsec_`` signing secret, checked at start. The agency
deduplicates by the signed ``webhook-id`` (our idempotency key), so a repeat is safe.
"""

from __future__ import annotations

import aiohttp

from connectors.municipal_social_service.client import MunicipalSocialServiceClient
from diasyndesi_sdk.connector import AgencyConnection, Connector, Delivery, Receipt
from diasyndesi_sdk.errors import ConfigurationError
from diasyndesi_sdk.http import http_session
from diasyndesi_sdk.webhooks import WebhookError, decode_secret
from schemas.codes import EnrollmentStatus


class MunicipalSocialServiceConnector(Connector):
    family = "municipal_social_service"

    def __init__(
        self, agency: str, connection: AgencyConnection, *, max_connections: int = 64
    ) -> None:
        super().__init__(agency, connection, max_connections=max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._client: MunicipalSocialServiceClient | None = None

    async def start(self) -> None:
        secret = self.connection.secret.get_secret_value()
        try:
            decode_secret(secret)
        except WebhookError:
            raise ConfigurationError(
                f"agency {self.agency}: secret must be a whsec_ Standard Webhooks secret"
            ) from None
        self._session = http_session(self.max_connections)
        self._client = MunicipalSocialServiceClient(
            self.connection.base_url,
            secret,
            timeout_s=self.connection.timeout_s,
            session=self._session,
        )

    async def deliver(self, delivery: Delivery) -> Receipt:
        assert self._client is not None, "deliver() before start()"
        case = await self._client.open_case(delivery.payload, delivery.idempotency_key)
        status = (
            EnrollmentStatus(case.status)
            if case.status in EnrollmentStatus.__members__.values()
            else None
        )
        return Receipt(reference=case.case_number, status=status, duplicate=case.duplicate)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
