"""The social grocery connector (connectors/social_grocery) against the real grocery
sandbox served on loopback: receipts, idempotency, waitlists, and failure classification."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI

from connectors.social_grocery.connector import SocialGroceryConnector
from connectors.social_grocery.sandbox.app import SocialGrocerySandboxConfig, create_app
from diasyndesi_sdk.connector import Delivery, Receipt, idempotency_key
from hub.errors import ConfigurationError, PermanentError, RetryableError
from hub.servers import RunningServer, start_server
from hub.settings import AgencyConnection
from hub.transliteration import elot743
from schemas.codes import EnrollmentStatus
from tests.family_testing import sandbox_get, set_faults, started_connectors

AGENCY = "kozani-social-grocery"
API_KEY = "grocery-key-for-tests"
EVENT_ID = "11111111-2222-4333-8444-555555555555"
REFERRAL_ID = "00000000-0000-4000-8000-000000000001"
CAPACITY = 3


def grocery_payload(latin: bool = True, referral_id: str = REFERRAL_ID) -> dict[str, Any]:
    """The shape the hub's mapping sends (mappings/kozani-social-grocery.yaml)."""
    text = elot743 if latin else str
    return {
        "external_id": referral_id,
        "referred_by": "KK-KOZANI",
        "referred_at": "2026-11-20T09:30:00+00:00",
        "services": ["GROCERY", "FEAD"],
        "household": {
            "first_name": text("Ευαγγελία"),
            "last_name": text("Παπαδοπούλου"),
            "id_type": "AMKA",
            "id_number": "01018012345",
            "members": 3,
            "phone": "+302461000000",
            "address": {
                "street": text("Δημοκρατίας 1"),
                "postal_code": "50100",
                "municipality": "kozani",
            },
        },
        "consent_reference": "KK-KOZANI/2026/1234",
    }


def delivery(
    event_id: str = EVENT_ID, payload: dict[str, Any] | None = None, referral_id: str = REFERRAL_ID
) -> Delivery:
    return Delivery(
        event_id=event_id,
        referral_id=referral_id,
        agency=AGENCY,
        idempotency_key=idempotency_key(event_id, AGENCY),
        payload=payload if payload is not None else grocery_payload(referral_id=referral_id),
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[FastAPI, RunningServer]]:
    config = SocialGrocerySandboxConfig(api_key=API_KEY, capacity=CAPACITY, decision_delay_s=0)
    app = create_app(config)
    server = await start_server(app, "127.0.0.1", 0, "grocery-sandbox-test")
    yield app, server
    await server.stop()


ConnectorFactory = Callable[..., Awaitable[SocialGroceryConnector]]


@pytest.fixture
async def make_connector(
    sandbox: tuple[FastAPI, RunningServer],
) -> AsyncIterator[ConnectorFactory]:
    def build(**overrides: Any) -> SocialGroceryConnector:
        settings: dict[str, Any] = {"base_url": sandbox[1].url, "secret": API_KEY, "timeout_s": 5}
        return SocialGroceryConnector(
            AGENCY, AgencyConnection.model_validate({**settings, **overrides})
        )

    async with started_connectors(build) as factory:
        yield factory


# --------------------------------------------------------------------------- success


async def test_referral_returns_the_grocery_case_id(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    receipt = await connector.deliver(delivery())
    assert receipt == Receipt(
        reference="SG-KOZ-000001", status=EnrollmentStatus.ACCEPTED, duplicate=False
    )
    received = await sandbox_get(sandbox[1].url, "received")
    assert len(received) == 1
    assert received[0]["idempotency_key"] == idempotency_key(EVENT_ID, AGENCY)
    assert received[0]["referral_id"] == REFERRAL_ID
    assert received[0]["payload"]["household"]["last_name"] == "Papadopoulou"
    assert received[0]["payload"]["household"]["address"]["street"] == "Dimokratias 1"


async def test_repeat_returns_the_same_case_as_duplicate(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    first = await connector.deliver(delivery())
    again = await connector.deliver(delivery())
    assert again.reference == first.reference
    assert again.status is EnrollmentStatus.ACCEPTED
    assert again.duplicate is True
    assert sandbox[0].state.ledger.stats() == {"received": 2, "accepted": 1, "duplicates": 1}


async def test_full_grocery_answers_waitlisted(make_connector: ConnectorFactory) -> None:
    connector = await make_connector()
    receipts = [
        await connector.deliver(
            delivery(f"{n:08d}-2222-4333-8444-555555555555", referral_id=f"r{n}")
        )
        for n in range(CAPACITY + 1)
    ]
    assert [r.status for r in receipts] == [EnrollmentStatus.ACCEPTED] * CAPACITY + [
        EnrollmentStatus.WAITLISTED
    ]
    assert receipts[-1].reference == f"SG-KOZ-{CAPACITY + 1:06d}"


async def test_case_status_reads_the_decision(make_connector: ConnectorFactory) -> None:
    connector = await make_connector()
    receipt = await connector.deliver(delivery())
    assert connector._client is not None
    assert await connector._client.case_status(str(receipt.reference)) == "accepted"
    assert await connector._client.case_status("SG-KOZ-999999") is None


# --------------------------------------------------------------------------- failures


async def test_greek_payload_is_permanent_422(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery(payload=grocery_payload(latin=False)))
    assert caught.value.error_class == "http_422"
    assert str(caught.value) == "refer_household: agency answered 422"
    assert "Παπαδοπούλου" not in str(caught.value)
    assert sandbox[0].state.ledger.stats()["received"] == 0


async def test_wrong_api_key_is_retryable_auth_rejected(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    # A refused key is the operator's to fix; the referral must wait, not die.
    connector = await make_connector(secret="not-the-key")
    with pytest.raises(RetryableError) as caught:
        await connector.deliver(delivery())
    assert caught.value.error_class == "auth_rejected"
    assert "not-the-key" not in str(caught.value)
    assert sandbox[0].state.ledger.stats()["received"] == 0


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(503, RetryableError), (500, RetryableError), (429, RetryableError), (400, PermanentError)],
)
async def test_agency_http_errors_are_classified(
    sandbox: tuple[FastAPI, RunningServer],
    make_connector: ConnectorFactory,
    status: int,
    error_type: type[Exception],
) -> None:
    connector = await make_connector()
    await set_faults(sandbox[1].url, fail_rate=1.0, status=status)
    with pytest.raises(error_type) as caught:
        await connector.deliver(delivery())
    assert type(caught.value) is error_type
    assert caught.value.error_class == f"http_{status}"  # type: ignore[attr-defined]
    assert sandbox[0].state.ledger.stats()["received"] == 0


async def test_start_refuses_a_missing_api_key() -> None:
    connector = SocialGroceryConnector(AGENCY, AgencyConnection(base_url="http://127.0.0.1:9"))
    with pytest.raises(ConfigurationError, match="API key"):
        await connector.start()
