"""The connector contract, held by the benefits agency (ΟΠΕΚΑ) connector and its SOAP 1.2
sandbox (WS-Security UsernameToken; the endpoint is ``{server}/soap``).

The payload is the opeka mapping applied to a realistic referral, so every contract test
also proves that what the hub maps is a valid request for the vendored WSDL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from connectors.benefits_agency.connector import BenefitsAgencyConnector
from connectors.benefits_agency.sandbox.app import BenefitsSandboxConfig, create_app
from diasyndesi_sdk.connector import Connector
from hub.errors import PermanentError
from hub.mapping import load_mapping
from hub.samples import sample_referral
from hub.servers import start_server
from hub.settings import AgencyConnection, packaged_dir
from schemas.referral import Referral
from tests.contract.base import ConnectorContract, Harness

MAPPINGS = packaged_dir("mappings")
USERNAME = "diasyndesi"
PASSWORD = "opeka-contract-pw-1"
MAPPING = load_mapping(MAPPINGS / "opeka.yaml", "opeka", "benefits_agency")


class BenefitsHarness(Harness):
    agency = "opeka"

    def connection(self, **overrides: Any) -> AgencyConnection:
        settings: dict[str, Any] = {
            "base_url": f"{self.server.url}/soap",
            "username": USERNAME,
            "secret": PASSWORD,
            "timeout_s": 5.0,
        }
        return AgencyConnection.model_validate({**settings, **overrides})

    def build(self, connection: AgencyConnection) -> Connector:
        return BenefitsAgencyConnector(self.agency, connection)

    def payload(self, referral_id: str) -> dict[str, Any]:
        body = sample_referral(seed=11, programmes=["GMI", "DISABILITY_ALLOWANCE"])
        body["beneficiary"]["vulnerabilities"] = ["low_income", "disability", "roma"]
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


class TestBenefitsAgencyContract(ConnectorContract):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        config = BenefitsSandboxConfig(username=USERNAME, password=PASSWORD, decision_delay_s=0)
        harness = BenefitsHarness()
        harness.server = await start_server(create_app(config), "127.0.0.1", 0, "opeka-contract")
        yield harness
        await harness.server.stop()

    async def test_the_mapped_payload_is_accepted_as_sent(
        self, harness: Harness, connector: Connector
    ) -> None:
        delivery = harness.delivery()
        await connector.deliver(delivery)
        [record] = await harness.sandbox("GET", "received")
        aitoun = record["payload"]["aitoun"]
        assert record["payload"]["hubReferralId"] == delivery.referral_id
        assert record["idempotency_key"] == delivery.idempotency_key
        assert aitoun["afm"] == delivery.payload["aitoun"]["afm"]
        assert aitoun["kategoriesEypatheias"]["kategoria"] == ["XAMILO_EISODIMA", "AMEA"]
        assert record["payload"]["aitoumenaProgrammata"]["kodikosProgrammatos"] == [
            "EEE",
            "EPIDOMA_ANAPIRIAS",
        ]

    async def test_a_payload_outside_the_wsdl_is_refused_before_sending(
        self, harness: Harness, connector: Connector
    ) -> None:
        delivery = harness.delivery()
        bad = {**delivery.payload, "notes": "not in the WSDL"}
        with pytest.raises(PermanentError) as caught:
            await connector.deliver(replace(delivery, payload=bad))
        assert caught.value.error_class == "invalid_payload"
        assert (await harness.sandbox("GET", "stats"))["received"] == 0

    async def test_a_soap_sender_fault_is_permanent(
        self, harness: Harness, connector: Connector
    ) -> None:
        """The SOAP form of a refusal. The base contract's ``status: 400`` knob answers a
        gateway-style JSON 400, which exercises the non-SOAP path only."""
        delivery = harness.delivery()
        aitoun = {**delivery.payload["aitoun"], "arithmosTaytopoiisis": "10016610339"}
        with pytest.raises(PermanentError) as caught:  # AMKA with a wrong check digit
            await connector.deliver(
                replace(delivery, payload={**delivery.payload, "aitoun": aitoun})
            )
        assert caught.value.error_class == "soap_client_fault"
        assert (await harness.sandbox("GET", "stats"))["accepted"] == 0
