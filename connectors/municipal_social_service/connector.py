"""The municipal social service connector: REST/JSON signed per Standard Webhooks.

``connection.base_url`` names one municipality (``http://host:8104/kozani-social-service``)
and ``connection.secret`` is its ``whsec_`` signing secret, checked at start. The agency
deduplicates by the signed ``webhook-id`` (our idempotency key), so a repeat is safe.
"""

from __future__ import annotations

import aiohttp

from connectors.municipal_social_service.client import MunicipalSocialServiceClient
from diasyndesi_sdk.connector import Delivery, Receipt, RetryableError, Withdrawal, Withdraws
from diasyndesi_sdk.errors import ConfigurationError
from diasyndesi_sdk.pooled import PooledConnector, enrollment_status
from diasyndesi_sdk.webhooks import WebhookError, decode_secret


class MunicipalSocialServiceConnector(PooledConnector[MunicipalSocialServiceClient], Withdraws):
    family = "municipal_social_service"

    def check(self) -> None:
        try:
            decode_secret(self.connection.secret.get_secret_value())
        except WebhookError:
            raise ConfigurationError(
                f"agency {self.agency}: secret must be a whsec_ Standard Webhooks secret"
            ) from None

    def make_client(self, session: aiohttp.ClientSession) -> MunicipalSocialServiceClient:
        return MunicipalSocialServiceClient(
            self.connection.base_url,
            self.connection.secret.get_secret_value(),
            timeout_s=self.connection.timeout_s,
            session=session,
        )

    async def deliver(self, delivery: Delivery) -> Receipt:
        case = await self.client.open_case(delivery.payload, delivery.idempotency_key)
        if case.case_number is None:  # refused by the client; for the type checker
            raise RetryableError("open_case: malformed answer", error_class="malformed_response")
        status = enrollment_status(case.status)
        return Receipt(reference=case.case_number, status=status, duplicate=case.duplicate)

    async def withdraw(self, withdrawal: Withdrawal) -> Receipt:
        """The ``referral.withdrawn`` webhook, signed, its ``webhook-id`` the withdrawal's
        idempotency key; the case found by the key it was (or will be) opened with."""
        case = await self.client.referral_withdrawn(
            withdrawal.delivery_key,
            withdrawal.referral_id,
            list(withdrawal.programmes),
            whole=withdrawal.whole,
            reason=withdrawal.reason,
            withdrawn_at=withdrawal.withdrawn_at.isoformat(),
            message_id=withdrawal.idempotency_key,
        )
        status = enrollment_status(case.status)
        return Receipt(reference=case.case_number, status=status, duplicate=case.duplicate)
