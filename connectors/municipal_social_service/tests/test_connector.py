"""The municipal social service connector against the real municipal sandbox on loopback:
receipts, idempotency through the signed message id, and how every failure is classified."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI

from connectors.municipal_social_service.connector import MunicipalSocialServiceConnector
from connectors.municipal_social_service.sandbox.app import MunicipalSandboxConfig, create_app
from diasyndesi_sdk.connector import Delivery, Receipt, idempotency_key
from diasyndesi_sdk.webhooks import new_secret
from hub.errors import ConfigurationError, PermanentError, RetryableError
from hub.servers import RunningServer, start_server
from hub.settings import AgencyConnection
from schemas.codes import EnrollmentStatus
from tests.family_testing import set_faults, started_connectors

KOZANI, KARPENISI = "kozani-social-service", "karpenisi-social-service"
SECRETS = {KOZANI: new_secret(), KARPENISI: new_secret()}
EVENT_ID = "11111111-2222-4333-8444-555555555555"
REFERRAL_ID = "00000000-0000-4000-8000-000000000001"
AMKA = "01018012345"
PAYLOAD: dict[str, Any] = {
    "hub_referral_id": REFERRAL_ID,
    "referring_centre": "KK-KOZANI",
    "referred_at": "2026-11-20T09:30:00+00:00",
    "citizen": {
        "id_type": "AMKA",
        "id_number": AMKA,
        "given_name": "Μαρία",
        "family_name": "Παπαδοπούλου",
        "birth_date": "1980-01-01",
        "phone": "+302461000000",
        "address": {"street": "Δημοκρατίας 1", "postal_code": "50100", "municipality": "kozani"},
        "household_size": 1,
    },
    "services": ["HELP_AT_HOME", "ELDERLY_DAY_CARE"],
    "vulnerabilities": ["elderly_living_alone", "disability", "chronic_illness"],
    "notes": "Ζει μόνη στον τρίτο όροφο χωρίς ανελκυστήρα.",
    "consent": {"reference": "KK-KOZANI/2026/1234", "given_at": "2026-11-20T09:00:00+02:00"},
    "source_system": "DIASYNDESI",
}


def delivery(event_id: str = EVENT_ID, payload: dict[str, Any] = PAYLOAD) -> Delivery:
    return Delivery(
        event_id=event_id,
        referral_id=REFERRAL_ID,
        agency=KOZANI,
        idempotency_key=idempotency_key(event_id, KOZANI),
        payload=payload,
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[FastAPI, RunningServer]]:
    app = create_app(MunicipalSandboxConfig(secrets=SECRETS, decision_delay_s=0))
    server = await start_server(app, "127.0.0.1", 0, "municipal-sandbox-test")
    yield app, server
    await server.stop()


ConnectorFactory = Callable[..., Awaitable[MunicipalSocialServiceConnector]]


@pytest.fixture
async def make_connector(
    sandbox: tuple[FastAPI, RunningServer],
) -> AsyncIterator[ConnectorFactory]:
    def build(**overrides: Any) -> MunicipalSocialServiceConnector:
        settings: dict[str, Any] = {
            "base_url": f"{sandbox[1].url}/{KOZANI}",
            "secret": SECRETS[KOZANI],
            "timeout_s": 5.0,
        }
        connection = AgencyConnection.model_validate({**settings, **overrides})
        return MunicipalSocialServiceConnector(KOZANI, connection)

    async with started_connectors(build) as factory:
        yield factory


def ledger_stats(sandbox: tuple[FastAPI, RunningServer], agency: str = KOZANI) -> Any:
    return sandbox[0].state.municipalities[agency].ledger.stats()


# --------------------------------------------------------------------------- success


async def test_open_case_returns_the_case_number(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    receipt = await connector.deliver(delivery())
    assert isinstance(receipt, Receipt)
    assert receipt.reference is not None
    assert re.fullmatch(r"KOZ-SS-\d{4}-00001", receipt.reference)
    assert receipt.status is EnrollmentStatus.RECEIVED
    assert receipt.duplicate is False
    received = sandbox[0].state.municipalities[KOZANI].ledger.received()
    assert received[0]["idempotency_key"] == idempotency_key(EVENT_ID, KOZANI)
    assert received[0]["payload"] == PAYLOAD  # notes and special-category flags arrive intact
    assert ledger_stats(sandbox, KARPENISI)["received"] == 0


async def test_repeat_returns_the_same_case(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    first = await connector.deliver(delivery())
    again = await connector.deliver(delivery())
    assert again.reference == first.reference
    assert again.duplicate is True
    assert ledger_stats(sandbox) == {"received": 2, "accepted": 1, "duplicates": 1}
    other = await connector.deliver(delivery("99999999-2222-4333-8444-555555555555"))
    assert other.reference != first.reference


# --------------------------------------------------------------------------- failures


async def test_wrong_secret_is_retryable_auth_rejected(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    # A refused signature is the operator's to fix; the referral must wait, not die.
    wrong = new_secret()
    connector = await make_connector(secret=wrong)
    with pytest.raises(RetryableError) as caught:
        await connector.deliver(delivery())
    assert caught.value.error_class == "auth_rejected"
    assert str(caught.value) == "open_case: credentials refused (signature: bad_signature)"
    assert wrong not in str(caught.value)
    assert ledger_stats(sandbox)["received"] == 0


async def test_other_municipality_secret_is_refused(make_connector: ConnectorFactory) -> None:
    connector = await make_connector(secret=SECRETS[KARPENISI])
    with pytest.raises(RetryableError) as caught:
        await connector.deliver(delivery())
    assert caught.value.error_class == "auth_rejected"


async def test_secret_that_is_not_whsec_fails_at_start(make_connector: ConnectorFactory) -> None:
    with pytest.raises(ConfigurationError, match="whsec_"):
        await make_connector(secret="plain-text-password")


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
    await set_faults(f"{sandbox[1].url}/{KOZANI}", fail_rate=1.0, status=status)
    with pytest.raises(error_type) as caught:
        await connector.deliver(delivery())
    assert type(caught.value) is error_type
    assert caught.value.error_class == f"http_{status}"  # type: ignore[attr-defined]
    assert str(caught.value) == f"open_case: agency answered {status}"
    assert AMKA not in str(caught.value)
    assert ledger_stats(sandbox)["received"] == 0


async def test_invalid_payload_is_permanent(make_connector: ConnectorFactory) -> None:
    connector = await make_connector()
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery(payload={**PAYLOAD, "services": ["GMI"]}))
    assert caught.value.error_class == "http_422"


async def test_same_key_with_another_body_is_permanent(make_connector: ConnectorFactory) -> None:
    connector = await make_connector()
    await connector.deliver(delivery())
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery(payload={**PAYLOAD, "notes": "changed"}))
    assert caught.value.error_class == "http_409"
