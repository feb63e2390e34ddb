"""A referral between agencies end to end through the embedded stack: ΔΥΠΑ refers a person
to the Kozani centre; every other agency the programmes route to receives it in its own
protocol, ΔΥΠΑ's own sandbox never does, and ΔΥΠΑ follows the answers through the hub."""

from __future__ import annotations

import uuid
from typing import Any

from hub.samples import sample_referral
from tests.integration.conftest import Stack
from tests.integration.test_fan_out import EVERY_FAMILY, final


async def post(stack: Stack, body: dict[str, Any], token: str) -> tuple[int, Any]:
    async with stack.session.post(
        f"{stack.url}/v1/referrals",
        json=body,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
    ) as response:
        return response.status, await response.json()


async def test_an_agencys_referral_reaches_the_others_and_never_itself(stack: Stack) -> None:
    dypa = stack.token("agencies", "dypa")
    warm = await stack.submit(sample_referral(programmes=["JOB_COUNSELLING"], seed=401))
    active = {a for a, c in stack.hub.registry.agencies.items() if c.active}
    programmes = [
        p
        for p in EVERY_FAMILY
        if p != "UNEMPLOYMENT_REGISTRATION" and (p != "GMI" or "opeka" in active)
    ]
    body = sample_referral(programmes=programmes, seed=402)
    body["caseworker"] = "dypa-officer-7"

    refused, error = await post(stack, {**body, "programmes": ["UNEMPLOYMENT_REGISTRATION"]}, dypa)
    assert refused == 422, error
    assert error["detail"][0]["field"] == "programmes.0"

    status, answer = await post(stack, body, dypa)
    assert status == 202, answer
    others = {
        "kozani-social-grocery",
        "kozani-social-service",
        "kozani-lifelong-learning",
    } | ({"opeka"} if "opeka" in active else set())
    assert set(answer["routed"]) == others
    [view] = await stack.wait_for([answer["id"]], final, timeout_s=60)
    assert view["origin"] == "dypa"
    assert view["centre"] == "KK-KOZANI"
    assert {a["agency"] for a in view["agencies"]} == others

    for agency in others:
        received = await stack.sandbox("received", agency)
        assert [r["duplicate"] for r in received if r["referral_id"] == answer["id"]] == [False], (
            agency
        )
    # ΔΥΠΑ got the centre's own referral (sent before, so delivered by now) and not its own.
    await stack.wait_for([warm["id"]], final, timeout_s=60)
    own = [r["referral_id"] for r in await stack.sandbox("received", "dypa")]
    assert own == [warm["id"]]

    # The originating agency reads every agency's answer.
    async with stack.session.get(
        f"{stack.url}/v1/referrals/{answer['id']}", headers={"Authorization": f"Bearer {dypa}"}
    ) as response:
        assert response.status == 200
        seen = await response.json()
    assert {a["agency"]: a["status"] for a in seen["agencies"]} == {
        a["agency"]: a["status"] for a in view["agencies"]
    }
