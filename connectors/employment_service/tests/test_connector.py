"""The ΔΥΠΑ connector (connectors/employment_service) against the real ΔΥΠΑ sandbox served
on loopback: receipts, idempotency, and how every failure is classified for the hub."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI

from connectors.employment_service.connector import EmploymentServiceConnector
from connectors.employment_service.sandbox.app import EmploymentSandboxConfig, create_app
from diasyndesi_sdk.connector import Delivery, Receipt, idempotency_key
from hub.errors import PermanentError, RetryableError
from hub.mapping import load_mapping
from hub.samples import sample_referral
from hub.servers import RunningServer, start_server
from hub.settings import AgencyConnection, packaged_dir
from schemas.codes import EnrollmentStatus
from schemas.referral import Referral
from tests.family_testing import sandbox_get, set_faults, started_connectors

MAPPINGS = packaged_dir("mappings")
SECRET = "sandbox-secret-for-tests"
EVENT_ID = "11111111-2222-4333-8444-555555555555"
REFERRAL_ID = "00000000-0000-4000-8000-000000000001"


def dypa_payload() -> dict[str, Any]:
    body = sample_referral(seed=1)
    body["consent"]["given_at"] = "2026-11-20T09:00:00+02:00"
    referral = Referral.model_validate(
        {
            **body,
            "id": REFERRAL_ID,
            "created_at": "2026-11-20T09:30:00+00:00",
            "municipality": "kozani",
            "routed": ["dypa"],
        }
    )
    mapping = load_mapping(MAPPINGS / "dypa.yaml", "dypa")
    return mapping.apply(referral.model_dump(mode="json"))


PAYLOAD = dypa_payload()
AMKA = PAYLOAD["jobseeker"]["id_number"]


def delivery(event_id: str = EVENT_ID) -> Delivery:
    return Delivery(
        event_id=event_id,
        referral_id=REFERRAL_ID,
        agency="dypa",
        idempotency_key=idempotency_key(event_id, "dypa"),
        payload=PAYLOAD,
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[FastAPI, RunningServer]]:
    app = create_app(EmploymentSandboxConfig(client_secret=SECRET, decision_delay_s=0))
    server = await start_server(app, "127.0.0.1", 0, "dypa-sandbox-test")
    yield app, server
    await server.stop()


ConnectorFactory = Callable[..., Awaitable[EmploymentServiceConnector]]


@pytest.fixture
async def make_connector(
    sandbox: tuple[FastAPI, RunningServer],
) -> AsyncIterator[ConnectorFactory]:
    def build(**overrides: Any) -> EmploymentServiceConnector:
        settings: dict[str, Any] = {
            "base_url": sandbox[1].url,
            "username": "diasyndesi",
            "secret": SECRET,
            "timeout_s": 5.0,
        }
        connection = AgencyConnection.model_validate({**settings, **overrides})
        return EmploymentServiceConnector("dypa", connection)

    async with started_connectors(build) as factory:
        yield factory


# --------------------------------------------------------------------------- success


async def test_delivery_returns_the_agency_registration_number(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    receipt = await connector.deliver(delivery())
    assert isinstance(receipt, Receipt)
    assert receipt.reference is not None
    assert re.fullmatch(r"DYPA-\d{4}-\d{6}", receipt.reference)
    assert receipt.status is EnrollmentStatus.RECEIVED
    assert receipt.duplicate is False
    received = await sandbox_get(sandbox[1].url, "received")
    assert len(received) == 1
    assert received[0]["idempotency_key"] == idempotency_key(EVENT_ID, "dypa")
    assert received[0]["referral_id"] == REFERRAL_ID
    assert received[0]["payload"] == PAYLOAD


async def test_repeated_idempotency_key_returns_the_first_registration(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    first = await connector.deliver(delivery())
    again = await connector.deliver(delivery())
    assert again.reference == first.reference
    assert again.duplicate is True
    assert sandbox[0].state.ledger.stats() == {"received": 2, "accepted": 1, "duplicates": 1}
    other = await connector.deliver(delivery("99999999-2222-4333-8444-555555555555"))
    assert other.reference != first.reference
    assert other.duplicate is False


def test_idempotency_key_is_deterministic_and_per_agency() -> None:
    key = idempotency_key(EVENT_ID, "dypa")
    assert key == idempotency_key(EVENT_ID, "dypa")
    assert re.fullmatch(r"dsy-[0-9a-f]{40}", key)
    assert key != idempotency_key(EVENT_ID, "opeka")
    assert key != idempotency_key("99999999-2222-4333-8444-555555555555", "dypa")


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (503, RetryableError),
        (500, RetryableError),
        (429, RetryableError),
        (400, PermanentError),
        (422, PermanentError),
    ],
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
    assert str(caught.value) == f"register: agency answered {status}"
    assert AMKA not in str(caught.value)
    assert sandbox[0].state.ledger.stats()["received"] == 0


async def test_wrong_client_secret_is_retryable_auth_rejected(
    sandbox: tuple[FastAPI, RunningServer], make_connector: ConnectorFactory
) -> None:
    # Refused credentials are the operator's to fix; the referral must wait, not die.
    connector = await make_connector(secret="not-the-secret")
    with pytest.raises(RetryableError) as caught:
        await connector.deliver(delivery())
    assert caught.value.error_class == "auth_rejected"
    assert str(caught.value) == "token: credentials refused (HTTP 401)"
    assert "not-the-secret" not in str(caught.value)
    assert sandbox[0].state.ledger.stats()["received"] == 0
