"""The information duty on the running hub (broker, sandbox agency, API over HTTP): the
clock starts when the person asks, not when the referral is submitted, and an agency's
answer does not discharge it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.samples import sample_referral
from tests.integration.conftest import Stack, decided


async def test_an_information_request_is_the_centres_clock_not_the_agencies(
    stack: Stack,
) -> None:
    submitted = await stack.submit(sample_referral(seed=301))
    referral_id = submitted["id"]
    [before] = await stack.wait_for([referral_id], decided)  # every agency has answered
    assert before["overdue"] is False
    assert before["information_requests"] == []
    centre = {"Authorization": f"Bearer {stack.token()}"}
    base = f"{stack.url}/v1/referrals/{referral_id}/information-requests"

    # The person asked on paper in January, long before the referral; nobody answered.
    async with stack.session.post(
        base,
        json={"requested_at": "2026-01-05T10:00:00+02:00", "channel": "letter"},
        headers=centre,
    ) as response:
        assert response.status == 201, await response.text()
        old = await response.json()
    assert (old["due"], old["overdue"]) == ("2026-01-20", True)
    # And again today, at the desk; the calendar call gives the same date first.
    now = datetime.now(UTC).replace(microsecond=0)
    async with stack.session.get(
        f"{stack.url}/v1/centres/KK-KOZANI/information-due",
        params={"requested_at": now.astimezone(UTC).isoformat()},
        headers=centre,
    ) as response:
        assert response.status == 200, await response.text()
        calendar = await response.json()
    async with stack.session.post(
        base, json={"requested_at": now.isoformat(), "channel": "in_person"}, headers=centre
    ) as response:
        assert response.status == 201, await response.text()
        today = await response.json()
    assert today["due"] == calendar["due"]
    assert today["overdue"] is False

    view = await stack.view(referral_id)
    assert view["overdue"] is True  # although every agency answered long ago
    assert [r["id"] for r in view["information_requests"]] == [old["id"], today["id"]]
    async with stack.session.get(f"{stack.url}/metrics") as response:
        assert 'diasyndesi_information_requests_overdue{centre="KK-KOZANI"} 1.0' in (
            await response.text()
        )

    answered_at = (now + timedelta(seconds=1)).isoformat()
    async with stack.session.post(
        f"{base}/{old['id']}/answer",
        json={"answered_at": answered_at, "summary": "told about the decision"},
        headers=centre,
    ) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["overdue"] is True  # answered, but late
    view = await stack.view(referral_id)
    assert view["overdue"] is False
    async with stack.session.get(
        f"{stack.url}/v1/information-requests", params={"overdue": "true"}, headers=centre
    ) as response:
        listed = await response.json()
    assert [r["id"] for r in listed["items"]] == [old["id"]]
    assert listed["next_cursor"] is None
