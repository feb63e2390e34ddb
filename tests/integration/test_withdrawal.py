"""Withdrawal end to end through the embedded stack: every routed agency is told in its own
protocol (SOAP, REST, the signed municipal webhook, REST over mutual TLS), each sandbox's
entry shows ``withdrawn_at``, each delivery becomes ``withdrawn``; a subset then the rest;
the answers to a repeat, a programme not in the referral, another centre and an unknown id;
and a withdrawal that overtakes its delivery."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from hub.samples import sample_referral
from tests.integration.conftest import Stack, delivered
from tests.integration.test_fan_out import EVERY_FAMILY


async def withdraw(
    stack: Stack,
    referral_id: str,
    body: dict[str, Any],
    token: str | None = None,
) -> tuple[int, Any]:
    async with stack.session.post(
        f"{stack.url}/v1/referrals/{referral_id}/withdraw",
        json=body,
        headers={"Authorization": f"Bearer {token or stack.token()}"},
    ) as response:
        return response.status, await response.json()


def all_withdrawn(view: dict[str, Any]) -> bool:
    return all(a["delivery"] == "withdrawn" for a in view["agencies"])


async def test_every_routed_agency_is_told_and_every_delivery_becomes_withdrawn(
    stack: Stack,
) -> None:
    active = {a for a, c in stack.hub.registry.agencies.items() if c.active}
    programmes = [p for p in EVERY_FAMILY if p != "GMI" or "opeka" in active]
    answer = await stack.submit(sample_referral(programmes=programmes, seed=301))
    await stack.wait_for([answer["id"]], delivered)

    status, accepted = await withdraw(stack, answer["id"], {"reason": "consent_withdrawn"})
    assert status == 202, accepted
    assert set(accepted["agencies"]) == set(answer["routed"])
    assert set(accepted["complete_for"]) == set(answer["routed"])
    assert accepted["programmes"] == programmes
    [view] = await stack.wait_for([answer["id"]], all_withdrawn, timeout_s=60)

    for agency in answer["routed"]:
        received = [
            r for r in await stack.sandbox("received", agency) if r["referral_id"] == answer["id"]
        ]
        assert received and all(r["withdrawn_at"] for r in received), agency
        calls = [c for c in await stack.sandbox("withdrawals", agency) if not c["duplicate"]]
        assert [(c["referral_id"], c["whole"], c["known"]) for c in calls] == [
            (answer["id"], True, True)
        ], agency
    kinds = [(t["kind"], t["agency"]) for t in view["timeline"]]
    assert ("withdrawal_requested", None) in kinds
    assert {a for k, a in kinds if k == "withdrawn"} == set(answer["routed"])

    again, conflict = await withdraw(stack, answer["id"], {"reason": "consent_withdrawn"})
    assert again == 409
    assert conflict["state"]["remaining_programmes"] == []
    assert conflict["state"]["withdrawn_programmes"] == programmes
    assert {a["delivery"] for a in conflict["state"]["agencies"]} == {"withdrawn"}


async def test_a_subset_then_the_rest(stack: Stack) -> None:
    programmes = ["UNEMPLOYMENT_REGISTRATION", "JOB_COUNSELLING", "SOCIAL_GROCERY"]
    answer = await stack.submit(sample_referral(programmes=programmes, seed=302))
    assert set(answer["routed"]) == {"dypa", "kozani-social-grocery"}
    await stack.wait_for([answer["id"]], delivered)

    status, first = await withdraw(
        stack, answer["id"], {"reason": "beneficiary_request", "programmes": ["JOB_COUNSELLING"]}
    )
    assert status == 202, first
    assert (first["agencies"], first["complete_for"]) == (["dypa"], [])
    await stack.wait_for(
        [answer["id"]],
        lambda v: any(t["kind"] == "withdrawn" for t in v["timeline"]),
    )
    view = await stack.view(answer["id"])
    assert {a["agency"]: a["delivery"] for a in view["agencies"]} == {
        "dypa": "delivered",  # a programme is left there: the case goes on
        "kozani-social-grocery": "delivered",
    }
    [entry] = await stack.sandbox("received", "dypa")
    assert entry["withdrawn_at"] is None
    assert entry["withdrawn_programmes"] == ["COUNSELLING"]  # ΔΥΠΑ's own code

    twice, conflict = await withdraw(
        stack, answer["id"], {"reason": "beneficiary_request", "programmes": ["JOB_COUNSELLING"]}
    )
    assert twice == 409
    assert conflict["state"]["withdrawn_programmes"] == ["JOB_COUNSELLING"]

    status, rest = await withdraw(stack, answer["id"], {"reason": "beneficiary_request"})
    assert status == 202, rest
    assert rest["programmes"] == ["UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY"]
    assert set(rest["complete_for"]) == {"dypa", "kozani-social-grocery"}
    await stack.wait_for([answer["id"]], all_withdrawn)
    [entry] = await stack.sandbox("received", "dypa")
    assert entry["withdrawn_at"] is not None


async def test_refusals_name_what_is_wrong(stack: Stack) -> None:
    answer = await stack.submit(sample_referral(programmes=["UNEMPLOYMENT_REGISTRATION"], seed=303))
    status, body = await withdraw(
        stack,
        answer["id"],
        {"reason": "error", "programmes": ["UNEMPLOYMENT_REGISTRATION", "GMI"]},
    )
    assert status == 422
    assert [e["field"] for e in body["detail"]] == ["programmes.1"]
    status, body = await withdraw(
        stack, answer["id"], {"reason": "error", "programmes": ["NOT_A_PROGRAMME"]}
    )
    assert status == 422
    assert [e["field"] for e in body["detail"]] == ["programmes.0"]
    status, body = await withdraw(stack, answer["id"], {"reason": "changed_mind"})
    assert status == 422
    assert [e["field"] for e in body["detail"]] == ["reason"]
    other = stack.token("centres", "KK-EORDAIA")
    assert (await withdraw(stack, answer["id"], {"reason": "error"}, other))[0] == 403
    assert (await withdraw(stack, str(uuid.uuid4()), {"reason": "error"}))[0] == 404
    agency = stack.token("agencies", "dypa")
    assert (await withdraw(stack, answer["id"], {"reason": "error"}, agency))[0] == 403
    view = await stack.view(answer["id"])
    assert not any(t["kind"] == "withdrawal_requested" for t in view["timeline"])


async def test_a_withdrawal_that_overtakes_the_delivery_leaves_nothing_active(
    stack: Stack,
) -> None:
    """ΔΥΠΑ refuses the delivery with a Retry-After, so it waits on a retry topic; the
    withdrawal, on the main topic, reaches ΔΥΠΑ first and is kept there; when the retry is
    due the connector does not deliver. ΔΥΠΑ never holds the referral; the hub shows it
    withdrawn."""
    warm = await stack.submit(sample_referral(programmes=["UNEMPLOYMENT_REGISTRATION"], seed=304))
    await stack.wait_for([warm["id"]], delivered)  # the consumer groups have joined
    await stack.faults(fail_rate=1.0, status=503, retry_after_s=6)
    answer = await stack.submit(sample_referral(programmes=["UNEMPLOYMENT_REGISTRATION"], seed=305))
    await stack.wait_for(
        [answer["id"]], lambda v: v["agencies"][0]["delivery"] == "retrying", timeout_s=30
    )
    await stack.faults()
    status, accepted = await withdraw(stack, answer["id"], {"reason": "duplicate"})
    assert status == 202, accepted
    await stack.wait_for([answer["id"]], all_withdrawn, timeout_s=30)
    await asyncio.sleep(8)  # the retry comes due, and is dropped
    received = [r for r in await stack.sandbox("received") if r["referral_id"] == answer["id"]]
    assert all(r["withdrawn_at"] for r in received)
    assert received == [], "the superseded delivery was made"
    [call] = [c for c in await stack.sandbox("withdrawals") if c["referral_id"] == answer["id"]]
    assert (call["known"], call["duplicate"]) == (False, False)
    view = await stack.view(answer["id"])
    assert view["agencies"][0]["delivery"] == "withdrawn"
    assert [t["detail"] for t in view["timeline"] if t["kind"] == "withdrawn"] == [
        "before delivery"
    ]
