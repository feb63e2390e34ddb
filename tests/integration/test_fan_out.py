"""One referral, every linked agency, each in its own protocol, each once; every answer back."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

from diasyndesi_sdk.webhooks import sign
from hub.samples import sample_referral
from tests.integration.conftest import Stack

EVERY_FAMILY = [
    "GMI",
    "UNEMPLOYMENT_REGISTRATION",
    "SOCIAL_GROCERY",
    "HELP_AT_HOME",
    "ADULT_EDUCATION",  # the fifth family: REST over mutual TLS
]


def final(view: dict[str, object]) -> bool:
    agencies = view["agencies"]
    assert isinstance(agencies, list)
    return all(
        a["delivery"] == "delivered" and a["status"] in {"accepted", "waitlisted"} for a in agencies
    )


async def test_a_kozani_referral_reaches_every_family_once(stack: Stack) -> None:
    active = {a for a, c in stack.hub.registry.agencies.items() if c.active}
    programmes = [p for p in EVERY_FAMILY if p != "GMI" or "opeka" in active]
    body = sample_referral(programmes=programmes, seed=201)
    body["beneficiary"]["vulnerabilities"] = ["long_term_unemployed", "disability"]
    answer = await stack.submit(body)
    expected = {
        "dypa",
        "kozani-social-grocery",
        "kozani-social-service",
        "kozani-lifelong-learning",
    } | ({"opeka"} if "opeka" in active else set())
    assert set(answer["routed"]) == expected
    [view] = await stack.wait_for([answer["id"]], final, timeout_s=60)
    assert {a["agency"] for a in view["agencies"]} == expected
    assert all(a["attempts"] == 1 for a in view["agencies"])

    grocery = await stack.sandbox("received", "kozani-social-grocery")
    municipal = await stack.sandbox("received", "kozani-social-service")
    employment = await stack.sandbox("received", "dypa")
    learning = await stack.sandbox("received", "kozani-lifelong-learning")
    for records in (grocery, municipal, employment, learning):
        assert [r["duplicate"] for r in records] == [False]
    # Minimisation on the wire: notes and special-category flags only where allowed.
    assert municipal[0]["payload"]["notes"] == body["notes"]
    assert "disability" in municipal[0]["payload"]["vulnerabilities"]
    for records in (grocery, employment, learning):
        wire = json.dumps(records[0]["payload"], ensure_ascii=False)
        assert body["notes"] not in wire
        assert "disability" not in wire.lower()
        assert body["beneficiary"]["afm"] not in wire
    assert learning[0]["payload"]["courses"] == ["GENERAL_ADULT_EDUCATION"]
    # The grocery's system takes Latin only: names went out transliterated.
    assert grocery[0]["payload"]["household"]["address"]["street"] == "Dimokratias 1"


async def test_signed_status_pushes_are_verified_and_replays_absorbed(stack: Stack) -> None:
    answer = await stack.submit(sample_referral(programmes=["HELP_AT_HOME"], seed=202))
    await stack.wait_for([answer["id"]], final)
    agency = "kozani-social-service"
    secret = stack.hub.settings.agencies[agency].secret.get_secret_value()
    url = f"{stack.url}/v1/agencies/{agency}/status"
    raw = json.dumps(
        {
            "referral_id": answer["id"],
            "status": "enrolled",
            "reference": "KOZ-SS-1",
            "occurred_at": datetime.now(UTC).isoformat(),  # after the sandbox's `accepted`
        }
    ).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = {**sign(secret, msg_id, time.time(), raw), "Content-Type": "application/json"}

    async with stack.session.post(url, data=raw, headers=headers) as first:
        assert first.status == 202, await first.text()
        event_id = (await first.json())["event_id"]
    async with stack.session.post(url, data=raw, headers=headers) as replay:
        assert replay.status == 202
        assert (await replay.json())["event_id"] == event_id  # absorbed, no second event
    other = raw.replace(b"enrolled", b"rejected")
    async with stack.session.post(url, data=other, headers=headers) as tampered:
        assert tampered.status == 401
        assert "bad_signature" in (await tampered.json())["detail"]
    stale = {**sign(secret, "msg_old", time.time() - 3600, raw), "Content-Type": "application/json"}
    async with stack.session.post(url, data=raw, headers=stale) as old:
        assert old.status == 401
        assert "stale_timestamp" in (await old.json())["detail"]
    await stack.wait_for(
        [answer["id"]],
        lambda v: any(a["status"] == "enrolled" for a in v["agencies"]),
    )
    async with stack.session.get(f"{stack.url}/metrics") as response:
        metrics = await response.text()
    assert (
        f'diasyndesi_inbound_status_refused_total{{connector="{agency}",'
        'reason="bad_signature"} 1.0'
    ) in metrics
    assert (
        f'diasyndesi_inbound_status_refused_total{{connector="{agency}",'
        'reason="replay_absorbed"} 1.0'
    ) in metrics
