"""The sandbox over real TLS: the agency API needs a verified client certificate, the
``/_sandbox/*`` routes do not; decisions, status reads, cancellation and status pushes."""

from __future__ import annotations

import asyncio

import pytest

from connectors.lifelong_learning.client import Enrolment
from connectors.sandbox_kit.certs import DevCerts
from tests.fake_hub import FakeHub

from .conftest import AGENCY, HUB_BEARER, ConnectorFactory, Sandbox, delivery, payload


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/enrolments"),
        ("GET", "/v1/enrolments/KDBM-KOZ-000001"),
        ("POST", "/v1/enrolments/cancellations"),
    ],
)
async def test_agency_api_refuses_a_connection_without_a_client_certificate(
    sandbox: Sandbox, certs: DevCerts, method: str, path: str
) -> None:
    body, headers = payload("ref-1"), {"Idempotency-Key": "k-1"}
    assert (await sandbox.call("POST", "/v1/enrolments", certs.client, json=body, headers=headers))[
        0
    ] == 201
    if path.endswith("cancellations"):
        headers = {"Idempotency-Key": "w-1"}
        body = {
            "enrolment_key": "k-1",
            "hub_referral_id": "ref-1",
            "courses": [],
            "whole": True,
            "reason": "duplicate",
        }
    refused = await sandbox.call(method, path, json=body, headers=headers)
    assert refused == (401, {"error": "client_certificate_required"})
    status, _ = await sandbox.call(method, path, certs.client, json=body, headers=headers)
    assert status in (200, 201)  # the same call with the hub's certificate goes through
    received = 2 if path == "/v1/enrolments" else 1  # the anonymous call was never recorded
    assert sandbox.stats() == {"received": received, "accepted": 1, "duplicates": received - 1}


async def test_sandbox_routes_answer_without_a_client_certificate(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    await (await make_connector()).deliver(delivery())
    assert await sandbox.call("GET", "/_sandbox/stats") == (
        200,
        {"received": 1, "accepted": 1, "duplicates": 0},
    )
    status, received = await sandbox.call("GET", "/_sandbox/received")
    assert status == 200
    assert set(received[0]) == {
        "idempotency_key",
        "referral_id",
        "payload",
        "received_at",
        "duplicate",
        "withdrawn_at",
        "withdrawn_programmes",
    }
    status, knobs = await sandbox.call("POST", "/_sandbox/faults", json={"fail_rate": 0.5})
    assert (status, knobs["fail_rate"]) == (200, 0.5)
    assert (await sandbox.call("GET", "/_sandbox/faults"))[1]["fail_rate"] == 0.5


async def test_invalid_enrolment_is_422_naming_the_fields(
    sandbox: Sandbox, certs: DevCerts
) -> None:
    body = {"hub_referral_id": "", "courses": ["GMI"]}
    status, answer = await sandbox.call(
        "POST", "/v1/enrolments", certs.client, json=body, headers={"Idempotency-Key": "k-2"}
    )
    assert status == 422
    assert [e["field"] for e in answer["errors"]] == ["hub_referral_id", "courses"]


async def test_status_is_pushed_to_the_hub(hub: FakeHub, make_connector: ConnectorFactory) -> None:
    receipt = await (await make_connector()).deliver(delivery())
    await hub.wait_for(2)
    assert [body["status"] for _, _, body in hub.pushes] == ["received", "accepted"]
    for path, authorization, body in hub.pushes:
        assert path == f"/v1/agencies/{AGENCY}/status"
        assert authorization == f"Bearer {HUB_BEARER}"
        assert (body["referral_id"], body["reference"]) == ("ref-1", receipt.reference)


async def test_status_read_and_cancel(hub: FakeHub, make_connector: ConnectorFactory) -> None:
    connector = await make_connector()
    sent = delivery()
    reference = str((await connector.deliver(sent)).reference)
    client = connector._client
    assert client is not None
    assert (await client.enrolment_status(reference)) is not None
    assert (await client.enrolment_status("KDBM-KOZ-999999")) is None

    async def cancel() -> Enrolment:
        return await client.cancel(
            sent.idempotency_key,
            sent.referral_id,
            ["DIGITAL_SKILLS"],
            whole=True,
            reason="consent_withdrawn",
            idempotency_key="dsy-withdrawal-1",
        )

    cancelled = await cancel()
    assert (cancelled.enrolment_id, cancelled.status, cancelled.duplicate) == (
        reference,
        "withdrawn",
        False,
    )
    assert (await cancel()).duplicate is True
    status = await client.enrolment_status(reference)
    assert status is not None and status.status == "withdrawn"
    await hub.wait_for(3)
    await asyncio.sleep(0.3)
    assert [body["status"] for _, _, body in hub.pushes] == ["received", "accepted", "withdrawn"]
