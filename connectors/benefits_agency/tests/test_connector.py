"""The ΟΠΕΚΑ connector (connectors/benefits_agency) against the real SOAP sandbox on
loopback: receipts, check-then-act idempotency, polling, and how every failure, hostile
answers included, is classified for the hub."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI

from connectors.benefits_agency.connector import BenefitsAgencyConnector
from connectors.benefits_agency.sandbox.app import BenefitsSandboxConfig, create_app
from diasyndesi_sdk.connector import Delivery, idempotency_key
from hub.errors import DeliveryError, PermanentError, RetryableError
from hub.samples import make_amka
from hub.servers import RunningServer, start_server
from hub.settings import AgencyConnection
from schemas.codes import EnrollmentStatus
from tests.family_testing import started_connectors

PASSWORD = "opeka-connector-pw-1"
EVENT_ID = "11111111-2222-4333-8444-555555555555"
REFERRAL_ID = "00000000-0000-4000-8000-000000000001"
AMKA = make_amka(date(1975, 1, 1), 1234)

PAYLOAD: dict[str, Any] = {
    "hubReferralId": REFERRAL_ID,
    "kentroKoinotitas": "KK-KOZANI",
    "imerominiaParapompis": "2026-11-20T09:30:00+00:00",
    "aitoumenaProgrammata": {"kodikosProgrammatos": ["EEE", "EPIDOMA_STEGASIS"]},
    "aitoun": {
        "typosTaytopoiisis": "AMKA",
        "arithmosTaytopoiisis": AMKA,
        "afm": "123456783",
        "eponymo": "Παπαδοπούλου",
        "onoma": "Μαρία",
        "imerominiaGennisis": "1975-01-01",
        "tilefono": "+302461012345",
        "dieythynsi": {"odos": "Δημοκρατίας 1", "tachydromikosKodikas": "50100", "dimos": "kozani"},
        "meliNoikokyriou": 3,
        "kategoriesEypatheias": {"kategoria": ["AMEA", "XAMILO_EISODIMA"]},
    },
    "synainesi": {
        "arithmosEggrafou": "KK-KOZANI/2026/0001",
        "imerominiaParoxis": "2026-11-20T09:00:00+02:00",
    },
}


def delivery(event_id: str = EVENT_ID, payload: dict[str, Any] | None = None) -> Delivery:
    return Delivery(
        event_id=event_id,
        referral_id=REFERRAL_ID,
        agency="opeka",
        idempotency_key=idempotency_key(event_id, "opeka"),
        payload=payload if payload is not None else PAYLOAD,
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[FastAPI, RunningServer]]:
    app = create_app(BenefitsSandboxConfig(password=PASSWORD, decision_delay_s=0.2))
    server = await start_server(app, "127.0.0.1", 0, "opeka-connector-test")
    yield app, server
    await server.stop()


ConnectorFactory = Callable[..., Awaitable[BenefitsAgencyConnector]]


@pytest.fixture
async def make_connector(
    sandbox: tuple[FastAPI, RunningServer],
) -> AsyncIterator[ConnectorFactory]:
    def build(**overrides: Any) -> BenefitsAgencyConnector:
        settings: dict[str, Any] = {
            "base_url": f"{sandbox[1].url}/soap",
            "username": "diasyndesi",
            "secret": PASSWORD,
            "timeout_s": 5.0,
        }
        connection = AgencyConnection.model_validate({**settings, **overrides})
        return BenefitsAgencyConnector("opeka", connection)

    async with started_connectors(build) as factory:
        yield factory


async def sandbox_post(server: RunningServer, path: str, body: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + path, json=body) as response,
    ):
        assert response.status == 200


def submissions(app: FastAPI) -> dict[str, int]:
    stats: dict[str, int] = app.state.ledger.stats()
    return stats


# --------------------------------------------------------------------------- success


async def test_delivery_returns_the_protocol_number(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    receipt = await connector.deliver(delivery())
    assert receipt.reference is not None
    assert re.fullmatch(r"OPEKA/\d{4}/\d{7}", receipt.reference)
    assert receipt.status is EnrollmentStatus.RECEIVED
    assert receipt.duplicate is False
    (entry,) = sandbox[0].state.ledger.received()
    assert entry["idempotency_key"] == idempotency_key(EVENT_ID, "opeka")
    assert entry["referral_id"] == REFERRAL_ID
    assert entry["payload"]["aitoun"]["eponymo"] == "Παπαδοπούλου"
    assert entry["payload"]["aitoun"]["dieythynsi"]["odos"] == "Δημοκρατίας 1"
    assert entry["payload"]["aitoun"]["kategoriesEypatheias"]["kategoria"] == [
        "AMEA",
        "XAMILO_EISODIMA",
    ]


async def test_check_then_act_never_submits_twice(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    first = await connector.deliver(delivery())
    again = await connector.deliver(delivery())
    assert again.reference == first.reference
    assert again.duplicate is True
    # The second delivery only asked for the status: the agency saw one submission.
    assert submissions(sandbox[0]) == {"received": 1, "accepted": 1, "duplicates": 0}
    other = await connector.deliver(delivery("99999999-2222-4333-8444-555555555555"))
    assert other.reference != first.reference
    assert submissions(sandbox[0])["accepted"] == 2


async def test_status_is_received_then_the_decision(
    make_connector: ConnectorFactory,
) -> None:
    connector = await make_connector()
    receipt = await connector.deliver(delivery())
    assert receipt.reference is not None
    report = await connector.status_of(receipt.reference)
    assert report is not None
    assert (report.status, report.reference) == (EnrollmentStatus.RECEIVED, receipt.reference)
    await asyncio.sleep(0.25)
    report = await connector.status_of(receipt.reference)
    assert report is not None
    assert report.status is EnrollmentStatus.ACCEPTED


async def test_status_of_an_unknown_reference_is_none(make_connector: ConnectorFactory) -> None:
    connector = await make_connector()
    assert await connector.status_of("OPEKA/2026/9999999") is None


# --------------------------------------------------------------------------- failures


async def assert_classified(
    connector: BenefitsAgencyConnector, error_type: type[DeliveryError], error_class: str
) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await connector.deliver(delivery())
    assert type(caught.value) is error_type
    assert caught.value.error_class == error_class
    assert AMKA not in str(caught.value)
    assert "Παπαδοπούλου" not in str(caught.value)
    return caught.value


async def test_receiver_fault_is_retryable(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    await sandbox_post(sandbox[1], "/_sandbox/faults", {"fail_rate": 1.0, "status": 500})
    error = await assert_classified(connector, RetryableError, "soap_server_fault")
    assert str(error) == "status: agency fault Receiver"


async def test_invalid_input_is_a_permanent_client_fault(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    bad = {**PAYLOAD, "aitoun": {**PAYLOAD["aitoun"], "arithmosTaytopoiisis": "12345678901"}}
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery(payload=bad))
    assert caught.value.error_class == "soap_client_fault"
    assert str(caught.value) == "submit: agency fault Sender"
    assert "12345678901" not in str(caught.value)
    assert submissions(sandbox[0])["received"] == 0


async def test_payload_that_does_not_fit_the_wsdl_is_permanent(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    missing = {**PAYLOAD, "aitoun": {k: v for k, v in PAYLOAD["aitoun"].items() if k != "onoma"}}
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery(payload=missing))
    assert caught.value.error_class == "invalid_payload"
    assert "aitoun.onoma" in str(caught.value)
    unknown = {**PAYLOAD, "sxolia": "κάτι"}
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery(payload=unknown))
    assert caught.value.error_class == "invalid_payload"
    assert submissions(sandbox[0])["received"] == 0


async def test_wrong_password_is_retryable_auth_rejected(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    # Refused credentials are the operator's to fix; the referral must wait, not die.
    connector = await make_connector(secret="not-the-password")
    error = await assert_classified(connector, RetryableError, "auth_rejected")
    assert str(error) == "status: credentials refused (Sender/FailedAuthentication)"
    assert "not-the-password" not in str(error)


@pytest.mark.parametrize(
    ("mode", "error_class"),
    [
        ("html", "malformed_response"),
        ("truncated", "malformed_response"),
        ("bomb", "unsafe_response"),
        ("oversized", "oversized"),
    ],
)
async def test_hostile_answers_are_classified(
    sandbox: tuple[FastAPI, RunningServer],
    make_connector: ConnectorFactory,
    mode: str,
    error_class: str,
) -> None:
    connector = await make_connector()
    await sandbox_post(sandbox[1], "/_sandbox/malformed", {"mode": mode})
    await sandbox_post(sandbox[1], "/_sandbox/faults", {"malformed_rate": 1.0})
    error = await assert_classified(connector, RetryableError, error_class)
    assert "lol" not in str(error)
    assert "Gateway" not in str(error)


async def test_external_entity_answer_never_leaks_the_file(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-91c2-XXE", encoding="utf-8")
    connector = await make_connector()
    await sandbox_post(
        sandbox[1], "/_sandbox/malformed", {"mode": "xxe", "xxe_target": str(secret)}
    )
    await sandbox_post(sandbox[1], "/_sandbox/faults", {"malformed_rate": 1.0})
    error = await assert_classified(connector, RetryableError, "unsafe_response")
    assert str(error) == "status: unsafe XML in answer (DTD)"
    chain: BaseException | None = error
    while chain is not None:  # nothing in the cause chain carries the file either
        assert "MARKER-91c2-XXE" not in str(chain)
        chain = chain.__cause__ or chain.__context__
    report = connector.status_of("OPEKA/2026/0000001")
    with pytest.raises(RetryableError) as caught:
        await report
    assert caught.value.error_class == "unsafe_response"
    assert "MARKER-91c2-XXE" not in str(caught.value)
