"""The connector contract, held by the employment service (ΔΥΠΑ) connector and its sandbox:
REST/JSON behind OAuth2 client credentials (client id ``diasyndesi``)."""

from __future__ import annotations

from diasyndesi_sdk.connector import Connector
from tests.contract.base import ConnectorContract, Harness


class TestEmploymentServiceContract(ConnectorContract):
    family = "employment_service"

    async def test_the_payload_reaches_the_agency_unchanged(
        self, harness: Harness, connector: Connector
    ) -> None:
        delivery = harness.delivery()
        await connector.deliver(delivery)
        received = await harness.call_sandbox("GET", "received")
        assert [r["payload"] for r in received] == [delivery.payload]
        assert received[0]["idempotency_key"] == delivery.idempotency_key
        assert received[0]["referral_id"] == delivery.referral_id
