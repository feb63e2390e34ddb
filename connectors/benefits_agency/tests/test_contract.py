"""The connector contract, held by the benefits agency (ΟΠΕΚΑ) connector and its SOAP 1.2
sandbox (WS-Security UsernameToken; the endpoint is ``{server}/soap``).

The payload is the opeka mapping applied to a realistic referral, so every contract test
also proves that what the hub maps is a valid request for the vendored WSDL.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from diasyndesi_sdk.connector import Connector
from hub.errors import PermanentError
from tests.contract.base import ConnectorContract, Harness


class TestBenefitsAgencyContract(ConnectorContract):
    family = "benefits_agency"

    async def test_the_mapped_payload_is_accepted_as_sent(
        self, harness: Harness, connector: Connector
    ) -> None:
        delivery = harness.delivery(
            programmes=["GMI", "DISABILITY_ALLOWANCE"],
            vulnerabilities=["low_income", "disability", "roma"],
        )
        await connector.deliver(delivery)
        [record] = await harness.call_sandbox("GET", "received")
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
        assert (await harness.call_sandbox("GET", "stats"))["received"] == 0

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
        assert (await harness.call_sandbox("GET", "stats"))["accepted"] == 0
