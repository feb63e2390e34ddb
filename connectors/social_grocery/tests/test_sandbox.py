"""The social grocery sandbox must behave like the off-the-shelf system it stands in for:
API key, Latin-only text, limited places, its own idempotency, status pushed to the hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from connectors.social_grocery.sandbox.app import SocialGrocerySandboxConfig, create_app
from tests.fake_hub import FakeHub
from tests.family_testing import asgi_client

API_KEY = "grocery-key-for-tests"
HUB_TOKEN = "hub-token-grocery"
PAYLOAD: dict[str, Any] = {
    "external_id": "ref-001",
    "services": ["GROCERY", "FEAD"],
    "household": {
        "first_name": "Evangelia",
        "last_name": "Papadopoulou",
        "members": 3,
        "address": {"street": "Dimokratias 1", "postal_code": "50100"},
    },
}


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(hub: FakeHub, tmp_path: Path) -> AppFactory:
    def factory(**overrides: Any) -> FastAPI:
        settings: dict[str, Any] = {
            "api_key": API_KEY,
            "hub_url": hub.url,
            "hub_token": HUB_TOKEN,
            "decision_delay_s": 0.1,
            "state_file": tmp_path / "grocery.jsonl",
        }
        return create_app(SocialGrocerySandboxConfig(**{**settings, **overrides}))

    return factory


@pytest.fixture
async def client(make_app: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async for c in asgi_client(make_app()):
        yield c


async def _refer(
    client: httpx.AsyncClient, key: str, body: dict[str, Any], api_key: str = API_KEY
) -> httpx.Response:
    headers = {"X-API-Key": api_key, "Idempotency-Key": key}
    return await client.post("/api/referrals", json=body, headers=headers)


async def _stats(client: httpx.AsyncClient) -> dict[str, int]:
    stats: dict[str, int] = (await client.get("/_sandbox/stats")).json()
    return stats


def test_config_refuses_an_empty_api_key() -> None:
    with pytest.raises(ValueError, match="api_key"):
        SocialGrocerySandboxConfig(api_key="")


async def test_missing_or_wrong_api_key_is_401(client: httpx.AsyncClient) -> None:
    missing = await client.post("/api/referrals", json=PAYLOAD, headers={"Idempotency-Key": "k"})
    assert missing.status_code == 401
    assert missing.json() == {"error": "invalid_api_key"}
    wrong = await _refer(client, "k", PAYLOAD, api_key="not-the-key")
    assert wrong.status_code == 401
    assert (await client.get("/api/referrals/SG-KOZ-000001")).status_code == 401
    assert (await _stats(client))["received"] == 0


async def test_missing_idempotency_key_is_400(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/referrals", json=PAYLOAD, headers={"X-API-Key": API_KEY})
    assert resp.status_code == 400
    assert resp.json() == {"error": "missing_idempotency_key"}
    broken = await client.post(
        "/api/referrals",
        content=b"{not json",
        headers={"X-API-Key": API_KEY, "Idempotency-Key": "k-json"},
    )
    assert broken.status_code == 400
    assert broken.json() == {"error": "invalid_json"}


async def test_greek_text_anywhere_is_422_naming_fields_not_values(
    client: httpx.AsyncClient,
) -> None:
    greek = {
        **PAYLOAD,
        "household": {**PAYLOAD["household"], "last_name": "Παπαδοπούλου"},
        "notes": ["ok", "Οδός Δημοκρατίας"],
    }
    resp = await _refer(client, "k-greek", greek)
    assert resp.status_code == 422
    fields = [e["field"] for e in resp.json()["errors"]]
    assert fields == ["household.last_name", "notes[1]"]
    assert "Παπαδοπούλου" not in resp.text
    assert (await _stats(client))["received"] == 0


async def test_external_id_and_known_services_are_required(client: httpx.AsyncClient) -> None:
    resp = await _refer(client, "k-bad", {"services": ["BANANAS"]})
    assert resp.status_code == 422
    assert [e["field"] for e in resp.json()["errors"]] == ["external_id", "services"]
    listed = await _refer(client, "k-list", [PAYLOAD])  # type: ignore[arg-type]
    assert listed.status_code == 422


async def test_referral_is_accepted_and_pushes_received_then_decision(
    client: httpx.AsyncClient, hub: FakeHub
) -> None:
    resp = await _refer(client, "k-new", PAYLOAD)
    assert resp.status_code == 201
    assert resp.json() == {"case_id": "SG-KOZ-000001", "status": "accepted"}

    await hub.wait_for(2)
    assert [body["status"] for _, _, body in hub.pushes] == ["received", "accepted"]
    for path, auth, body in hub.pushes:
        assert path == "/v1/agencies/kozani-social-grocery/status"
        assert auth == f"Bearer {HUB_TOKEN}"
        assert body["referral_id"] == "ref-001"
        assert body["reference"] == "SG-KOZ-000001"

    case = await client.get("/api/referrals/SG-KOZ-000001", headers={"X-API-Key": API_KEY})
    assert case.json() == {
        "case_id": "SG-KOZ-000001",
        "external_id": "ref-001",
        "status": "accepted",
    }
    missing = await client.get("/api/referrals/SG-KOZ-999999", headers={"X-API-Key": API_KEY})
    assert missing.status_code == 404


async def test_full_grocery_waitlists(make_app: AppFactory, hub: FakeHub) -> None:
    async for client in asgi_client(make_app(capacity=2)):
        answers = [
            (await _refer(client, f"k-{n}", {**PAYLOAD, "external_id": f"ref-{n}"})).json()
            for n in range(3)
        ]
        assert [a["status"] for a in answers] == ["accepted", "accepted", "waitlisted"]
        await hub.wait_for(6)
        decided = {
            b["reference"]: b["status"] for _, _, b in hub.pushes if b["status"] != "received"
        }
        assert decided["SG-KOZ-000003"] == "waitlisted"


async def test_repeat_key_answers_200_with_same_case(
    client: httpx.AsyncClient, hub: FakeHub
) -> None:
    first = await _refer(client, "k-rep", PAYLOAD)
    again = await _refer(client, "k-rep", dict(reversed(list(PAYLOAD.items()))))
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    received = (await client.get("/_sandbox/received")).json()
    assert [r["duplicate"] for r in received] == [False, True]
    assert await _stats(client) == {"received": 2, "accepted": 1, "duplicates": 1}
    await hub.wait_for(2)
    await asyncio.sleep(0.15)
    assert len(hub.pushes) == 2  # the repeat caused no further pushes


async def test_reused_key_with_other_body_is_422(client: httpx.AsyncClient) -> None:
    assert (await _refer(client, "k-reuse", PAYLOAD)).status_code == 201
    other = await _refer(client, "k-reuse", {**PAYLOAD, "external_id": "ref-002"})
    assert other.status_code == 422
    assert other.json() == {"error": "idempotency_key_reused"}
    assert (await _stats(client))["received"] == 1


async def test_state_file_survives_restart_with_the_same_decisions(
    make_app: AppFactory,
) -> None:
    async for first_client in asgi_client(make_app(capacity=1)):
        created = await _refer(first_client, "k-persist", PAYLOAD)
        assert created.json()["status"] == "accepted"
    async for second_client in asgi_client(make_app(capacity=1)):
        again = await _refer(second_client, "k-persist", PAYLOAD)
        assert again.status_code == 200
        assert again.json() == created.json()
        nxt = await _refer(second_client, "k-next", {**PAYLOAD, "external_id": "ref-9"})
        assert nxt.json() == {"case_id": "SG-KOZ-000002", "status": "waitlisted"}


async def test_fault_knobs_answer_503_and_record_nothing(client: httpx.AsyncClient) -> None:
    knobs = await client.post("/_sandbox/faults", json={"fail_rate": 1.0, "status": 503})
    assert knobs.status_code == 200
    assert (await _refer(client, "k-fault", PAYLOAD)).status_code == 503
    assert await _stats(client) == {"received": 0, "accepted": 0, "duplicates": 0}
    await client.post("/_sandbox/faults", json={})
    assert (await _refer(client, "k-fault", PAYLOAD)).status_code == 201


async def test_429_with_retry_after_and_early_retries_per_key(client: httpx.AsyncClient) -> None:
    knobs = {"fail_rate": 1.0, "status": 429, "retry_after_s": 0.5}
    await client.post("/_sandbox/faults", json=knobs)
    first = await _refer(client, "k-slow", PAYLOAD)
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    await _refer(client, "k-slow", PAYLOAD)
    described = (await client.get("/_sandbox/faults")).json()
    assert (described["retry_after_sent"], described["early_retries"]) == (2, 1)
