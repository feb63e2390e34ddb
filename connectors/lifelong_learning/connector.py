"""The lifelong-learning connector: REST/JSON over mutual TLS, deduplicated by the centre
per ``Idempotency-Key``."""

from __future__ import annotations

import ssl

import aiohttp

from connectors.lifelong_learning.client import LifelongLearningClient
from connectors.lifelong_learning.settings import LifelongLearningConnection
from diasyndesi_sdk.connector import (
    AgencyConnection,
    Delivery,
    Receipt,
    RetryableError,
    Withdrawal,
    Withdraws,
)
from diasyndesi_sdk.errors import ConfigurationError
from diasyndesi_sdk.pooled import PooledConnector
from diasyndesi_sdk.tls import client_context
from schemas.codes import EnrollmentStatus

ANSWERS = ("received", "accepted", "waitlisted", "rejected", "withdrawn")
STATUSES = {answer: EnrollmentStatus(answer) for answer in ANSWERS}


class LifelongLearningConnector(PooledConnector[LifelongLearningClient], Withdraws):
    family = "lifelong_learning"

    def __init__(
        self, agency: str, connection: AgencyConnection, *, max_connections: int = 64
    ) -> None:
        super().__init__(agency, connection, max_connections=max_connections)
        self.tls = LifelongLearningConnection.model_validate(
            connection.model_dump(exclude={"secret_file"})
        )

    def check(self) -> None:
        if not self.connection.base_url.startswith("https://"):
            raise ConfigurationError(f"agency {self.agency}: base_url must be https://")

    def ssl_context(self) -> ssl.SSLContext:
        """A file that cannot be used stops the start, naming the setting, not the file."""
        tls = self.tls
        return client_context(self.agency, tls.client_cert, tls.client_key, tls.ca_file)

    def make_client(self, session: aiohttp.ClientSession) -> LifelongLearningClient:
        return LifelongLearningClient(self.connection.base_url, self.connection.timeout_s, session)

    async def deliver(self, delivery: Delivery) -> Receipt:
        enrolment = await self.client.enrol(delivery.payload, delivery.idempotency_key)
        if enrolment.enrolment_id is None:  # the client refuses this; for the type checker
            raise RetryableError("enrol: malformed answer", error_class="malformed_response")
        status = STATUSES.get(enrolment.status)
        return Receipt(enrolment.enrolment_id, status, duplicate=enrolment.duplicate)

    async def withdraw(self, withdrawal: Withdrawal) -> Receipt:
        """The centre's cancellation, by the key the enrolment was (or will be) sent with."""
        cancelled = await self.client.cancel(
            withdrawal.delivery_key,
            withdrawal.referral_id,
            list(withdrawal.programmes),
            whole=withdrawal.whole,
            reason=withdrawal.reason,
            idempotency_key=withdrawal.idempotency_key,
        )
        status = STATUSES.get(cancelled.status)
        return Receipt(cancelled.enrolment_id, status, duplicate=cancelled.duplicate)
