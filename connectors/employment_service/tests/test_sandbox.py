"""The ΔΥΠΑ sandbox must behave like the real registry, or connector tests prove nothing."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from connectors.employment_service.sandbox.app import EmploymentSandboxConfig, create_app
from connectors.sandbox_kit import StatusPusher
from tests.fake_hub import FakeHub
from tests.family_testing import asgi_client

SECRET = "s3cret-for-tests"
HUB_TOKEN = "hub-token-dypa"


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(hub: FakeHub, tmp_path: Path) -> AppFactory:
    def factory(**overrides: Any) -> FastAPI:
        settings: dict[str, Any] = {
            "client_secret": SECRET,
            "hub_url": hub.url,
            "hub_token": HUB_TOKEN,
            "decision_delay_s": 0.1,
            "state_file": tmp_path / "dypa.jsonl",
        }
        return create_app(EmploymentSandboxConfig(**{**settings, **overrides}))

    return factory


@pytest.fixture
async def client(make_app: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async for c in asgi_client(make_app()):
        yield c


async def _token(client: httpx.AsyncClient) -> str:
    resp = await client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "diasyndesi",
            "client_secret": SECRET,
        },
    )
    assert resp.status_code == 200
    return str(resp.json()["access_token"])


async def _register(
    client: httpx.AsyncClient, key: str, body: dict[str, Any], token: str | None = None
) -> httpx.Response:
    token = token or await _token(client)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    return await client.post("/api/v1/registrations", json=body, headers=headers)


PAYLOAD = {"hub_referral_id": "ref-001", "amka": "01018012345", "municipality": "kozani"}


async def test_token_with_form_credentials(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "diasyndesi",
            "client_secret": SECRET,
        },
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"]) >= 32
    assert resp.headers["cache-control"] == "no-store"


async def test_token_with_basic_auth(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=("diasyndesi", SECRET)
    )
    assert resp.status_code == 200
    token = resp.json()["access_token"]
    created = await _register(client, "k-basic", PAYLOAD, token=token)
    assert created.status_code == 201


async def test_wrong_secret_is_invalid_client(client: httpx.AsyncClient) -> None:
    basic = base64.b64encode(b"diasyndesi:wrong").decode()
    resp = await client.post(
        "/oauth/token",
        content="grant_type=client_credentials",
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert resp.status_code == 401
    assert resp.json() == {"error": "invalid_client"}
    assert resp.headers["www-authenticate"].startswith("Basic")


async def test_wrong_grant_type_is_refused(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/oauth/token", data={"grant_type": "password"}, auth=("diasyndesi", SECRET)
    )
    assert resp.status_code == 400
    assert resp.json() == {"error": "unsupported_grant_type"}


async def test_missing_or_unknown_bearer_is_invalid_token(client: httpx.AsyncClient) -> None:
    missing = await client.post(
        "/api/v1/registrations", json=PAYLOAD, headers={"Idempotency-Key": "k1"}
    )
    assert missing.status_code == 401
    assert missing.json() == {"error": "invalid_token"}
    unknown = await _register(client, "k1", PAYLOAD, token="not-a-token")
    assert unknown.status_code == 401
    assert (await client.get("/_sandbox/stats")).json()["received"] == 0


async def test_expired_token_is_refused(make_app: AppFactory) -> None:
    async for client in asgi_client(make_app(token_ttl_s=1)):
        token = await _token(client)
        await asyncio.sleep(1.05)
        resp = await _register(client, "k-exp", PAYLOAD, token=token)
        assert resp.status_code == 401
        assert resp.json() == {"error": "invalid_token"}


async def test_missing_idempotency_key_is_400(client: httpx.AsyncClient) -> None:
    token = await _token(client)
    resp = await client.post(
        "/api/v1/registrations", json=PAYLOAD, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 400
    assert resp.json() == {"error": "missing_idempotency_key"}


async def test_body_must_name_the_hub_referral(client: httpx.AsyncClient) -> None:
    resp = await _register(client, "k-bad", {"amka": "01018012345"})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["field"] == "hub_referral_id"
    token = await _token(client)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-bad2"}
    broken = await client.post("/api/v1/registrations", content=b"{not json", headers=headers)
    assert broken.status_code == 400
    assert broken.json() == {"error": "invalid_json"}


async def test_first_registration_pushes_received_then_decision(
    client: httpx.AsyncClient, hub: FakeHub
) -> None:
    resp = await _register(client, "k-new", PAYLOAD)
    assert resp.status_code == 201
    number = resp.json()["registration_number"]
    assert resp.json()["status"] == "received"
    assert number == f"DYPA-{datetime.now(UTC).year}-000001"

    await hub.wait_for(2)
    statuses = [body["status"] for _, _, body in hub.pushes]
    assert statuses == ["received", "accepted"]
    for path, auth, body in hub.pushes:
        assert path == "/v1/agencies/dypa/status"
        assert auth == f"Bearer {HUB_TOKEN}"
        assert body["referral_id"] == "ref-001"
        assert body["reference"] == number
        assert datetime.fromisoformat(body["occurred_at"]).tzinfo is not None
    first = datetime.fromisoformat(hub.pushes[0][2]["occurred_at"])
    second = datetime.fromisoformat(hub.pushes[1][2]["occurred_at"])
    assert (second - first).total_seconds() >= 0.09

    token = await _token(client)
    status = await client.get(
        f"/api/v1/registrations/{number}", headers={"Authorization": f"Bearer {token}"}
    )
    assert status.json() == {"registration_number": number, "status": "accepted"}
    missing = await client.get(
        "/api/v1/registrations/DYPA-1999-999999", headers={"Authorization": f"Bearer {token}"}
    )
    assert missing.status_code == 404


async def test_repeat_key_answers_200_with_same_number(
    client: httpx.AsyncClient, hub: FakeHub
) -> None:
    first = await _register(client, "k-rep", PAYLOAD)
    again = await _register(client, "k-rep", dict(reversed(list(PAYLOAD.items()))))
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()

    received = (await client.get("/_sandbox/received")).json()
    assert [r["duplicate"] for r in received] == [False, True]
    assert {r["referral_id"] for r in received} == {"ref-001"}
    assert set(received[0]) == {
        "idempotency_key",
        "referral_id",
        "payload",
        "received_at",
        "duplicate",
        "withdrawn_at",
        "withdrawn_programmes",
    }
    assert (await client.get("/_sandbox/stats")).json() == {
        "received": 2,
        "accepted": 1,
        "duplicates": 1,
    }
    await hub.wait_for(2)
    await asyncio.sleep(0.15)
    assert len(hub.pushes) == 2  # the repeat caused no further pushes


async def test_reused_key_with_other_body_is_422(client: httpx.AsyncClient) -> None:
    assert (await _register(client, "k-reuse", PAYLOAD)).status_code == 201
    other = await _register(client, "k-reuse", {**PAYLOAD, "hub_referral_id": "ref-002"})
    assert other.status_code == 422
    assert other.json() == {"error": "idempotency_key_reused"}
    assert (await client.get("/_sandbox/stats")).json()["received"] == 1


async def test_state_file_survives_restart(make_app: AppFactory, tmp_path: Path) -> None:
    async for first_client in asgi_client(make_app()):
        created = await _register(first_client, "k-persist", PAYLOAD)
        assert created.status_code == 201
    assert (tmp_path / "dypa.jsonl").exists()

    async for second_client in asgi_client(make_app()):
        again = await _register(second_client, "k-persist", PAYLOAD)
        assert again.status_code == 200
        assert again.json() == created.json()
        nxt = await _register(second_client, "k-next", {**PAYLOAD, "hub_referral_id": "ref-9"})
        assert nxt.json()["registration_number"].endswith("-000002")
        stats = (await second_client.get("/_sandbox/stats")).json()
        assert stats == {"received": 3, "accepted": 2, "duplicates": 1}


async def test_fail_rate_answers_503_and_records_nothing(client: httpx.AsyncClient) -> None:
    knobs = await client.post("/_sandbox/faults", json={"fail_rate": 1.0, "status": 503})
    assert knobs.status_code == 200
    assert (await client.get("/_sandbox/faults")).json()["fail_rate"] == 1.0

    resp = await _register(client, "k-fault", PAYLOAD)
    assert resp.status_code == 503
    assert (await client.get("/_sandbox/stats")).json() == {
        "received": 0,
        "accepted": 0,
        "duplicates": 0,
    }
    assert (await client.get("/_sandbox/received")).json() == []

    await client.post("/_sandbox/faults", json={})
    assert (await _register(client, "k-fault", PAYLOAD)).status_code == 201


async def test_outage_window_then_recovery(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json={"outage_s": 0.2, "status": 502})
    during = await _register(client, "k-out", PAYLOAD)
    assert during.status_code == 502
    assert "retry-after" in during.headers
    await asyncio.sleep(0.25)
    assert (await _register(client, "k-out", PAYLOAD)).status_code == 201


async def test_pusher_retries_5xx_but_not_4xx(hub: FakeHub) -> None:
    pusher = StatusPusher("dypa", hub.url, HUB_TOKEN, attempts=3, backoff_s=0.01)
    try:
        hub.answers = [503, 500]
        assert await pusher.push("ref-7", "received", "DYPA-2026-000007") is True
        assert len(hub.pushes) == 3
        hub.answers = [403]
        assert await pusher.push("ref-7", "accepted", "DYPA-2026-000007") is False
        assert len(hub.pushes) == 4
    finally:
        await pusher.close()


async def test_pusher_gives_up_quietly_when_hub_is_down() -> None:
    pusher = StatusPusher("dypa", "http://127.0.0.1:9", None, attempts=2, backoff_s=0.01)
    try:
        assert await pusher.push("ref-8", "received", "DYPA-2026-000008") is False
    finally:
        await pusher.close()


async def test_429_with_retry_after_and_early_retries_per_key(client: httpx.AsyncClient) -> None:
    knobs = {"fail_rate": 1.0, "status": 429, "retry_after_s": 30}
    await client.post("/_sandbox/faults", json=knobs)
    first = await _register(client, "k-slow", PAYLOAD)
    assert first.status_code == 429 and first.headers["retry-after"] == "30"
    await _register(client, "k-slow", PAYLOAD)  # at once: 30 s too early
    await _register(client, "k-other", PAYLOAD)  # another key: its first call
    described = (await client.get("/_sandbox/faults")).json()
    assert (described["retry_after_sent"], described["early_retries"]) == (3, 1)
