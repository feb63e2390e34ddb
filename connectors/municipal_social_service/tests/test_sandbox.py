"""The municipal social services sandbox must check signatures as strictly as the real
agencies would, and sign its status pushes so that the hub can check them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook

from connectors.municipal_social_service.sandbox.app import (
    MunicipalSandboxConfig,
    create_app,
    push_headers,
)
from connectors.sandbox_kit import StatusPusher
from diasyndesi_sdk.webhooks import new_secret, sign, verify
from tests.fake_hub import FakeHub as _RecordingHub
from tests.family_testing import asgi_client


class FakeHub(_RecordingHub):
    """Keeps headers and the raw body: the signature covers exactly those bytes."""

    def __init__(self) -> None:
        super().__init__(default_status=202)

    async def record(self, request: web.Request) -> tuple[str, dict[str, str], bytes]:
        return (request.path, dict(request.headers), await request.read())


KOZANI, KARPENISI = "kozani-social-service", "karpenisi-social-service"
SECRETS = {KOZANI: new_secret(), KARPENISI: new_secret()}
YEAR = datetime.now(UTC).year
CASE = {
    "hub_referral_id": "ref-001",
    "referring_centre": "KK-KOZANI",
    "citizen": {"id_type": "AMKA", "id_number": "01018012345", "given_name": "Μαρία"},
    "services": ["HELP_AT_HOME", "PSYCHOSOCIAL_SUPPORT"],
    "vulnerabilities": ["elderly_living_alone", "disability", "mental_health"],
    "notes": "Ζει μόνη, χρειάζεται βοήθεια στο σπίτι.",
}


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    """This file's FakeHub (it records signed pushes), over the shared one."""
    fake = FakeHub()
    await fake.start()
    yield fake
    await fake.stop()


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(hub: FakeHub, tmp_path: Path) -> AppFactory:
    def factory(**overrides: Any) -> FastAPI:
        settings: dict[str, Any] = {
            "secrets": SECRETS,
            "hub_url": hub.url,
            "decision_delay_s": 0.1,
            "state_dir": tmp_path,
        }
        return create_app(MunicipalSandboxConfig(**{**settings, **overrides}))

    return factory


@pytest.fixture
async def client(make_app: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async for c in asgi_client(make_app()):
        yield c


async def open_case(
    client: httpx.AsyncClient,
    msg_id: str,
    body: dict[str, Any] | bytes = CASE,
    *,
    agency: str = KOZANI,
    secret: str | None = None,
    timestamp: float | None = None,
    extra: dict[str, str] | None = None,
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    signed = sign(secret or SECRETS[agency], msg_id, timestamp or time.time(), raw)
    headers = {**signed, "Content-Type": "application/json", **(extra or {})}
    return await client.post(f"/{agency}/api/v1/referrals", content=raw, headers=headers)


async def stats(client: httpx.AsyncClient, agency: str = KOZANI) -> dict[str, int]:
    return dict((await client.get(f"/{agency}/_sandbox/stats")).json())


# --------------------------------------------------------------------------- signatures


async def test_request_signed_by_the_reference_package_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    raw = json.dumps(CASE, ensure_ascii=False)
    now = datetime.now(UTC).replace(microsecond=0)
    headers = {
        "webhook-id": "msg_ref_pkg",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRETS[KOZANI]).sign("msg_ref_pkg", now, raw),
        "content-type": "application/json",
    }
    resp = await client.post(f"/{KOZANI}/api/v1/referrals", content=raw.encode(), headers=headers)
    assert resp.status_code == 201
    assert resp.json() == {"case_number": f"KOZ-SS-{YEAR}-00001", "status": "received"}
    received = (await client.get(f"/{KOZANI}/_sandbox/received")).json()
    assert received[0]["idempotency_key"] == "msg_ref_pkg"
    assert received[0]["payload"] == CASE


@pytest.mark.parametrize(
    ("tweak", "reason"),
    [
        ({"secret": new_secret()}, "bad_signature"),
        ({"secret": SECRETS[KARPENISI]}, "bad_signature"),
        ({"timestamp": -600.0}, "stale_timestamp"),
        ({"timestamp": 600.0}, "future_timestamp"),
    ],
    ids=["unknown-secret", "other-municipality", "stale", "future"],
)
async def test_refused_signatures_are_401_with_a_reason(
    client: httpx.AsyncClient, tweak: dict[str, Any], reason: str
) -> None:
    # A timestamp is an offset from now, taken when the test runs: one taken at collection
    # was within the tolerance again once the suite had run for five minutes.
    if "timestamp" in tweak:
        tweak = {**tweak, "timestamp": time.time() + tweak["timestamp"]}
    resp = await open_case(client, "msg_bad", **tweak)
    assert resp.status_code == 401
    assert resp.json() == {"error": "invalid_signature", "reason": reason}
    assert (await stats(client))["received"] == 0


async def test_tampered_body_and_missing_headers_are_401(client: httpx.AsyncClient) -> None:
    raw = json.dumps(CASE).encode()
    headers = sign(SECRETS[KOZANI], "msg_t", time.time(), raw)
    tampered = await client.post(
        f"/{KOZANI}/api/v1/referrals", content=raw.replace(b"ref-001", b"ref-002"), headers=headers
    )
    assert tampered.json() == {"error": "invalid_signature", "reason": "bad_signature"}
    bare = await client.post(f"/{KOZANI}/api/v1/referrals", json=CASE)
    assert bare.status_code == 401
    assert bare.json()["reason"] == "missing_headers"


# --------------------------------------------------------------------------- idempotency


async def test_replayed_id_same_body_answers_the_first_case(client: httpx.AsyncClient) -> None:
    first = await open_case(client, "dsy-key-1")
    again = await open_case(client, "dsy-key-1", timestamp=time.time() + 1)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert await stats(client) == {"received": 2, "accepted": 1, "duplicates": 1}


async def test_replayed_id_with_another_body_is_409(client: httpx.AsyncClient) -> None:
    assert (await open_case(client, "dsy-key-2")).status_code == 201
    other = await open_case(client, "dsy-key-2", {**CASE, "hub_referral_id": "ref-002"})
    assert other.status_code == 409
    assert other.json() == {"error": "webhook_id_reused"}
    assert (await stats(client))["received"] == 1


async def test_idempotency_key_header_must_match_the_signed_id(
    client: httpx.AsyncClient,
) -> None:
    same = await open_case(client, "dsy-key-3", extra={"Idempotency-Key": "dsy-key-3"})
    assert same.status_code == 201
    other = await open_case(client, "dsy-key-4", extra={"Idempotency-Key": "dsy-other"})
    assert other.status_code == 400
    assert other.json() == {"error": "idempotency_key_mismatch"}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**CASE, "hub_referral_id": ""}, "hub_referral_id"),
        ({**CASE, "services": ["GMI"]}, "services"),
        ({**CASE, "services": []}, "services"),
        ({**CASE, "vulnerabilities": "disability"}, "vulnerabilities"),
        ({**CASE, "notes": "x" * 4001}, "notes"),
    ],
)
async def test_invalid_case_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    resp = await open_case(client, "dsy-invalid", body)
    assert resp.status_code == 422
    assert [e["field"] for e in resp.json()["errors"]] == [field]


async def test_broken_json_is_400(client: httpx.AsyncClient) -> None:
    resp = await open_case(client, "dsy-broken", b"{not json")
    assert resp.status_code == 400
    assert resp.json() == {"error": "invalid_json"}


def test_config_refuses_a_secret_that_is_not_whsec() -> None:
    with pytest.raises(ValidationError, match="signing secret"):
        MunicipalSandboxConfig(secrets={KOZANI: "not base64!"})
    with pytest.raises(ValidationError):
        MunicipalSandboxConfig(secrets={})


# --------------------------------------------------------------------------- municipalities


async def test_each_municipality_has_its_own_numbers_and_stats(
    client: httpx.AsyncClient,
) -> None:
    koz = await open_case(client, "dsy-a", agency=KOZANI)
    kar = await open_case(client, "dsy-a", agency=KARPENISI)
    kar2 = await open_case(client, "dsy-b", {**CASE, "hub_referral_id": "r2"}, agency=KARPENISI)
    assert koz.json()["case_number"] == f"KOZ-SS-{YEAR}-00001"
    assert kar.json()["case_number"] == f"KAR-SS-{YEAR}-00001"
    assert kar2.json()["case_number"] == f"KAR-SS-{YEAR}-00002"
    assert await stats(client, KOZANI) == {"received": 1, "accepted": 1, "duplicates": 0}
    assert await stats(client, KARPENISI) == {"received": 2, "accepted": 2, "duplicates": 0}
    assert (await client.get("/_sandbox/stats")).json() == {
        "received": 3,
        "accepted": 3,
        "duplicates": 0,
    }
    everything = (await client.get("/_sandbox/received")).json()
    assert sorted(r["agency"] for r in everything) == [KARPENISI, KARPENISI, KOZANI]
    assert (await client.post("/_sandbox/reset")).json()["received"] == 0
    assert (await client.post("/no-such-service/api/v1/referrals", json=CASE)).status_code == 404


async def test_faults_per_municipality_and_for_all(client: httpx.AsyncClient) -> None:
    knobs = await client.post(f"/{KOZANI}/_sandbox/faults", json={"fail_rate": 1.0})
    assert knobs.json()["fail_rate"] == 1.0
    assert (await open_case(client, "dsy-f", agency=KOZANI)).status_code == 503
    assert (await open_case(client, "dsy-f", agency=KARPENISI)).status_code == 201
    every = await client.post("/_sandbox/faults", json={"fail_rate": 1.0, "status": 500})
    assert {k: v["status"] for k, v in every.json().items()} == {KOZANI: 500, KARPENISI: 500}
    assert (await open_case(client, "dsy-g", agency=KARPENISI)).status_code == 500
    await client.post("/_sandbox/faults", json={})
    assert (await open_case(client, "dsy-f", agency=KOZANI)).status_code == 201


async def test_state_survives_restart(make_app: AppFactory, tmp_path: Path) -> None:
    async for first in asgi_client(make_app()):
        created = await open_case(first, "dsy-persist", agency=KARPENISI)
    assert (tmp_path / f"{KARPENISI}.jsonl").exists()
    async for second in asgi_client(make_app()):
        again = await open_case(second, "dsy-persist", agency=KARPENISI)
        assert again.status_code == 200
        assert again.json() == created.json()


# --------------------------------------------------------------------------- status push


async def test_pushes_are_signed_so_the_hub_can_verify_them(
    client: httpx.AsyncClient, hub: FakeHub
) -> None:
    number = (await open_case(client, "dsy-push")).json()["case_number"]
    await hub.wait_for(2)
    assert [json.loads(raw)["status"] for _, _, raw in hub.pushes] == ["received", "accepted"]
    ids = set()
    for path, headers, raw in hub.pushes:
        assert path == f"/v1/agencies/{KOZANI}/status"
        ids.add(verify(SECRETS[KOZANI], headers, raw))
        Webhook(SECRETS[KOZANI]).verify(raw, headers)  # the reference package agrees
        body = json.loads(raw)
        assert set(body) == {"referral_id", "status", "reference", "occurred_at"}
        assert (body["referral_id"], body["reference"]) == ("ref-001", number)
        assert datetime.fromisoformat(body["occurred_at"]).tzinfo is not None
        assert "authorization" not in {k.lower() for k in headers}
    assert len(ids) == 2  # one id per status change

    resp = await client.get(
        f"/{KOZANI}/api/v1/referrals/{number}",
        headers=sign(SECRETS[KOZANI], "msg_q", time.time(), b""),
    )
    assert resp.json() == {"case_number": number, "status": "accepted"}
    unsigned = await client.get(f"/{KOZANI}/api/v1/referrals/{number}")
    assert unsigned.status_code == 401


async def test_retried_push_keeps_its_message_id(hub: FakeHub) -> None:
    pusher = StatusPusher(
        KOZANI, hub.url, None, attempts=3, backoff_s=0.01, headers_for=push_headers(SECRETS[KOZANI])
    )
    try:
        hub.answers = [503]
        assert await pusher.push("ref-7", "received", f"KOZ-SS-{YEAR}-00007") is True
    finally:
        await pusher.close()
    assert len(hub.pushes) == 2
    (_, first, raw1), (_, second, raw2) = hub.pushes
    assert raw1 == raw2
    assert first["webhook-id"] == second["webhook-id"]
    assert verify(SECRETS[KOZANI], second, raw2) == first["webhook-id"]


async def test_hub_token_is_sent_beside_the_signature(make_app: AppFactory, hub: FakeHub) -> None:
    async for c in asgi_client(make_app(hub_tokens={KARPENISI: "hub-token-kar"})):
        assert (await open_case(c, "dsy-tok", agency=KARPENISI)).status_code == 201
        await hub.wait_for(1)
    _, headers, raw = hub.pushes[0]
    assert headers["Authorization"] == "Bearer hub-token-kar"
    assert verify(SECRETS[KARPENISI], headers, raw).startswith("msg_")


async def test_429_with_retry_after_and_early_retries_per_webhook_id(
    client: httpx.AsyncClient,
) -> None:
    knobs = {"fail_rate": 1.0, "status": 429, "retry_after_s": 30}
    await client.post(f"/{KOZANI}/_sandbox/faults", json=knobs)
    first = await open_case(client, "dsy-slow", agency=KOZANI)
    assert first.status_code == 429 and first.headers["retry-after"] == "30"
    await open_case(client, "dsy-slow", agency=KOZANI)
    described = (await client.get(f"/{KOZANI}/_sandbox/faults")).json()
    assert (described["retry_after_sent"], described["early_retries"]) == (2, 1)
