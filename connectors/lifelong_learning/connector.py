"""The lifelong-learning connector: REST/JSON over mutual TLS, deduplicated by the centre
per ``Idempotency-Key``."""

from __future__ import annotations

import aiohttp

from connectors.lifelong_learning.client import LifelongLearningClient
from connectors.lifelong_learning.settings import LifelongLearningConnection
from diasyndesi_sdk.connector import AgencyConnection, Connector, Delivery, Receipt
from diasyndesi_sdk.errors import ConfigurationError
from diasyndesi_sdk.http import http_session
from diasyndesi_sdk.tls import client_context
from schemas.codes import EnrollmentStatus

ANSWERS = ("received", "accepted", "waitlisted", "rejected", "withdrawn")
STATUSES = {answer: EnrollmentStatus(answer) for answer in ANSWERS}


class LifelongLearningConnector(Connector):
    family = "lifelong_learning"

    def __init__(
        self, agency: str, connection: AgencyConnection, *, max_connections: int = 64
    ) -> None:
        super().__init__(agency, connection, max_connections=max_connections)
        self.tls = LifelongLearningConnection.model_validate(
            connection.model_dump(exclude={"secret_file"})
        )
        self._session: aiohttp.ClientSession | None = None
        self._client: LifelongLearningClient | None = None

    async def start(self) -> None:
        """A file that cannot be used stops the start, naming the setting, not the file."""
        if not self.connection.base_url.startswith("https://"):
            raise ConfigurationError(f"agency {self.agency}: base_url must be https://")
        tls = self.tls
        context = client_context(self.agency, tls.client_cert, tls.client_key, tls.ca_file)
        self._session = http_session(self.max_connections, ssl_context=context)
        self._client = LifelongLearningClient(
            self.connection.base_url, self.connection.timeout_s, self._session
        )

    async def deliver(self, delivery: Delivery) -> Receipt:
        assert self._client is not None, "deliver() before start()"
        enrolment = await self._client.enrol(delivery.payload, delivery.idempotency_key)
        status = STATUSES.get(enrolment.status)
        return Receipt(enrolment.enrolment_id, status, duplicate=enrolment.duplicate)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
