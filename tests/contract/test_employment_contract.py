"""The connector contract, held by the employment service (ΔΥΠΑ) connector and its sandbox:
REST/JSON behind OAuth2 client credentials (client id ``diasyndesi``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.employment_service.connector import EmploymentServiceConnector
from connectors.employment_service.sandbox.app import EmploymentSandboxConfig, create_app
from diasyndesi_sdk.connector import Connector
from hub.mapping import load_mapping
from hub.samples import sample_referral
from hub.servers import start_server
from hub.settings import AgencyConnection, packaged_dir
from schemas.referral import Referral
from tests.contract.base import ConnectorContract, Harness

MAPPINGS = packaged_dir("mappings")
CLIENT_ID = "diasyndesi"
CLIENT_SECRET = "dypa-contract-client-secret"
MAPPING = load_mapping(MAPPINGS / "dypa.yaml", "dypa", "employment_service")


class EmploymentHarness(Harness):
    agency = "dypa"

    def connection(self, **overrides: Any) -> AgencyConnection:
        settings: dict[str, Any] = {
            "base_url": self.server.url,
            "username": CLIENT_ID,
            "secret": CLIENT_SECRET,
            "timeout_s": 5.0,
        }
        return AgencyConnection.model_validate({**settings, **overrides})

    def build(self, connection: AgencyConnection) -> Connector:
        return EmploymentServiceConnector(self.agency, connection)

    def payload(self, referral_id: str) -> dict[str, Any]:
        """The dypa mapping applied to a realistic referral: exactly what the hub sends."""
        body = sample_referral(seed=7, programmes=["UNEMPLOYMENT_REGISTRATION", "JOB_COUNSELLING"])
        referral = Referral.model_validate(
            {
                **body,
                "id": referral_id,
                "created_at": "2026-11-20T09:30:00+00:00",
                "municipality": "kozani",
                "routed": [self.agency],
            }
        )
        return MAPPING.apply(referral.model_dump(mode="json"))


class TestEmploymentServiceContract(ConnectorContract):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        config = EmploymentSandboxConfig(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, decision_delay_s=0
        )
        harness = EmploymentHarness()
        harness.server = await start_server(create_app(config), "127.0.0.1", 0, "dypa-contract")
        yield harness
        await harness.server.stop()

    async def test_the_payload_reaches_the_agency_unchanged(
        self, harness: Harness, connector: Connector
    ) -> None:
        delivery = harness.delivery()
        await connector.deliver(delivery)
        received = await harness.sandbox("GET", "received")
        assert [r["payload"] for r in received] == [delivery.payload]
        assert received[0]["idempotency_key"] == delivery.idempotency_key
        assert received[0]["referral_id"] == delivery.referral_id
