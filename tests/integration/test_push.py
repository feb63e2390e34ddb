"""Push to centres end to end through the embedded stack: a centre's event stream shows its
referral delivered and its status changed as the real agency answers, and resumes after a
reconnect with ``Last-Event-ID`` with only the newer events; a webhook on a real loopback
server receives calls that verify with the secret shown once; a failing receiver is retried
and ends dead-lettered in the operators' list; who may do what, and bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from diasyndesi_sdk.webhooks import verify
from hub.samples import sample_referral
from tests.integration.conftest import Stack
from tests.unit.test_centre_events import Stream
from tests.unit.test_push_webhooks import Receiver


async def open_stream(stack: Stack, token: str, **headers: str) -> Stream:
    response = await stack.session.get(
        f"{stack.url}/v1/centres/KK-KOZANI/events",
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
    )
    assert response.status == 200, await response.text()
    assert (await response.content.readline()).startswith(b"retry: ")
    return Stream(response)


async def register(stack: Stack, url: str, events: list[str], token: str | None = None) -> Any:
    async with stack.session.post(
        f"{stack.url}/v1/centres/KK-KOZANI/webhooks",
        json={"url": url, "events": events},
        headers={"Authorization": f"Bearer {token or stack.token()}"},
    ) as response:
        return response.status, await response.json()


async def test_the_stream_and_webhooks_tell_the_centre(stack: Stack) -> None:
    good, failing = Receiver(), Receiver()
    await good.start()
    await failing.start()
    failing.status = 503
    try:
        status, hook = await register(
            stack, good.url, ["referral.delivered", "referral.status_changed"]
        )
        assert status == 201, hook
        status, _ = await register(stack, failing.url, ["referral.delivered"])
        assert status == 201

        stream = await open_stream(stack, stack.token())
        answer = await stack.submit(sample_referral(seed=501))
        seen: list[dict[str, Any]] = []
        while not {"referral.delivered", "referral.status_changed"} <= {m["event"] for m in seen}:
            message = await stream.next()
            assert message["data"]["referral_id"] == answer["id"]
            seen.append(message)
        stream.response.close()
        # the delivery's outcome and the agency's status travel on two topics: either may
        # be applied first
        [delivered] = [m for m in seen if m["event"] == "referral.delivered"]
        assert delivered["data"]["agency"] == "dypa"
        assert [int(m["id"]) for m in seen] == sorted(int(m["id"]) for m in seen)

        again = await open_stream(stack, stack.token(), **{"Last-Event-ID": seen[0]["id"]})
        resumed = await again.next()
        again.response.close()
        assert resumed["id"] == seen[1]["id"]
        assert resumed["event"] == seen[1]["event"]

        wanted = {"referral.delivered", "referral.status_changed"}
        while not wanted <= good.types():
            await good.next_call()
        for headers, body in good.calls:
            verify(hook["secret"], headers, body)
            assert json.loads(body)["referral_id"] == answer["id"]

        operator = stack.token("operators", "operator")
        dead: list[Any] = []
        while not dead:
            async with stack.session.get(
                f"{stack.url}/v1/ops/webhook-deliveries",
                params={"state": "dead_lettered"},
                headers={"Authorization": f"Bearer {operator}"},
            ) as response:
                assert response.status == 200
                dead = await response.json()
            await asyncio.sleep(0.1)
        [letter] = dead
        assert (letter["referral_id"], letter["last_status"]) == (answer["id"], 503)
        assert letter["attempts"] >= 2 and len(failing.calls) == letter["attempts"]
    finally:
        await good.stop()
        await failing.stop()


async def test_who_may_listen_and_what_is_refused(stack: Stack) -> None:
    other = stack.token("centres", "KK-EORDAIA")
    operator = stack.token("operators", "operator")
    checks = [
        ("/v1/centres/KK-KOZANI/events", other, 403),
        ("/v1/centres/KK-KOZANI/events", stack.token("agencies", "dypa"), 403),
        ("/v1/centres/KK-NOWHERE/events", operator, 404),
        ("/v1/centres/KK-KOZANI/webhooks", other, 403),
        ("/v1/centres/KK-NOWHERE/webhooks", operator, 404),
    ]
    for path, token, expected in checks:
        async with stack.session.get(
            f"{stack.url}{path}", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == expected, (path, await response.text())
    status, body = await register(stack, "gopher://127.0.0.1/hook", ["referral.delivered"])
    assert (status, [e["field"] for e in body["detail"]]) == (422, ["url"])
    status, body = await register(stack, "http://127.0.0.1:9/hook", ["referral.everything"])
    assert (status, [e["field"] for e in body["detail"]]) == (422, ["events.0"])
    status, body = await register(stack, "http://127.0.0.1:9/", ["referral.delivered"], other)
    assert status == 403
