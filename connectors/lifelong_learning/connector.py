"""The lifelong-learning connector: REST/JSON over mutual TLS, deduplicated by the centre
per ``Idempotency-Key``. Certificate files: a ``LifelongLearningConnection``'s, or given."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from connectors.base import AgencyConnection, Connector, Delivery, Receipt
from connectors.http import http_session
from connectors.lifelong_learning.client import LifelongLearningClient
from connectors.lifelong_learning.settings import LifelongLearningConnection
from hub.errors import ConfigurationError
from schemas.codes import EnrollmentStatus

ANSWERS = ("received", "accepted", "waitlisted", "rejected", "withdrawn")
STATUSES = {answer: EnrollmentStatus(answer) for answer in ANSWERS}


class LifelongLearningConnector(Connector):
    family = "lifelong_learning"

    def __init__(
        self,
        agency: str,
        connection: AgencyConnection,
        *,
        max_connections: int = 64,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        super().__init__(agency, connection, max_connections=max_connections)
        tls = connection if isinstance(connection, LifelongLearningConnection) else None
        self._cert = client_cert or (tls and tls.client_cert)
        self._key = client_key or (tls and tls.client_key)
        self._ca_file = ca_file or (tls and tls.ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._client: LifelongLearningClient | None = None

    async def start(self) -> None:
        """A file that cannot be used stops the start, naming the setting, not the file."""
        if not self.connection.base_url.startswith("https://"):
            raise ConfigurationError(f"{self.agency}: base_url must be https:// (mutual TLS)")
        if not (self._cert and self._key and self._ca_file):
            raise ConfigurationError(f"{self.agency}: client_cert, client_key, ca_file required")
        setting = "ca_file"
        try:
            tls = ssl.create_default_context(cafile=self._ca_file)
            setting = "client_cert/client_key"
            tls.load_cert_chain(self._cert, self._key, password="")  # "": no prompt, ever
        except OSError as exc:  # ssl.SSLError included
            reason = getattr(exc, "reason", None) or exc.strerror or "not PEM, or key encrypted"
            raise ConfigurationError(f"{self.agency}: {setting} unusable ({reason})") from None
        self._session = http_session(self.max_connections)
        self._client = LifelongLearningClient(
            self.connection.base_url, tls, self.connection.timeout_s, self._session
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
