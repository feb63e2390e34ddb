"""Centres' webhooks through the real app on loopback, over a real database: registering,
listing and removing, the answers to bad input (422 naming ``url`` or ``events.N``, 403,
404), production's refusal of non-public addresses, the secret kept encrypted, and the
dispatcher calling a real aiohttp receiver: signed calls that verify with the secret shown
once, a failing receiver retried and then dead-lettered where operators see it, no redirect
followed, a removed webhook's calls cancelled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy import select

from diasyndesi_sdk.webhooks import verify
from hub.db import WebhookDeliveryRow, WebhookRow
from hub.webhook_dispatch import WebhookDispatcher
from hub.webhook_secrets import secret_key, unseal
from schemas.codes import EnrollmentStatus
from tests.unit.test_caseload import FOUR
from tests.unit.test_centre_events import Push, push_env


@pytest.fixture
async def push(tmp_path: Path) -> AsyncIterator[Push]:
    settings = {"webhook_initial_s": 0.01, "webhook_max_s": 0.05, "webhook_retry_for_s": 0.3}
    async for env in push_env(tmp_path, **settings):
        yield env


class Receiver:
    """A centre's system on loopback: records each call; answers ``status``."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self.redirected = 0
        self.url = ""
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def types(self) -> set[str]:
        return {json.loads(body)["type"] for _, body in self.calls}

    async def next_call(self) -> None:
        """Wait for the next call to arrive."""
        await self.arrived.wait()
        self.arrived.clear()

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.calls.append((dict(request.headers), await request.read()))
            self.arrived.set()
            if self.status in (302, 307):
                raise web.HTTPTemporaryRedirect("/elsewhere")
            return web.Response(status=self.status)

        async def elsewhere(_: web.Request) -> web.Response:
            self.redirected += 1
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/elsewhere", elsewhere)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start()
    yield found
    await found.stop()


async def register(
    push: Push, body: dict[str, Any], who: str = "KK-KOZANI", centre: str = "KK-KOZANI"
) -> Any:
    return await push.client.post(
        f"/v1/centres/{centre}/webhooks", json=body, headers=push.auth(who=who)
    )


def dispatcher(push: Push) -> WebhookDispatcher:
    settings = push.state.settings
    return WebhookDispatcher(push.db, settings.push, push.metrics, secret_key(settings))


async def drain(push: Push, until: str, rounds: int = 2000) -> list[WebhookDeliveryRow]:
    """Run the dispatcher (as ``serve`` does) until no call is pending any more and at
    least one is in state ``until``."""
    sender = dispatcher(push)
    task = asyncio.create_task(sender.run())
    try:
        for _ in range(rounds):
            async with push.db.sessions() as session:
                rows = list((await session.execute(select(WebhookDeliveryRow))).scalars())
            if rows and not any(r.state == "pending" for r in rows):
                if any(r.state == until for r in rows):
                    return rows
            await asyncio.sleep(0.01)
        raise AssertionError(f"calls still pending: {[(r.state, r.attempts) for r in rows]}")
    finally:
        sender.stop()
        await task


async def test_register_list_and_remove(push: Push, receiver: Receiver) -> None:
    created = await register(
        push, {"url": receiver.url, "events": ["referral.delivered", "referral.status_changed"]}
    )
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_")
    assert hook["events"] == ["referral.delivered", "referral.status_changed"]
    listed = await push.client.get("/v1/centres/KK-KOZANI/webhooks", headers=push.auth())
    assert listed.status_code == 200
    assert [h["id"] for h in listed.json()] == [hook["id"]]
    assert "secret" not in listed.json()[0]
    by_operator = await push.client.get(
        "/v1/centres/KK-KOZANI/webhooks", headers=push.auth("operators", "operator")
    )
    assert by_operator.status_code == 200

    async with push.db.sessions() as session:
        row = await session.get(WebhookRow, hook["id"])
    assert row is not None
    assert hook["secret"].encode() not in row.secret  # encrypted at rest
    key = secret_key(push.state.settings)
    assert key is not None and unseal(key, row.id, row.secret) == hook["secret"]

    url = f"/v1/centres/KK-KOZANI/webhooks/{hook['id']}"
    assert (await push.client.delete(url, headers=push.auth(who="KK-EORDAIA"))).status_code == 403
    assert (await push.client.delete(url, headers=push.auth())).status_code == 204
    assert (await push.client.delete(url, headers=push.auth())).status_code == 404
    listed = await push.client.get("/v1/centres/KK-KOZANI/webhooks", headers=push.auth())
    assert listed.json() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.org/hook", "events": ["referral.delivered"]}, "url"),
        ({"url": "not a url", "events": ["referral.delivered"]}, "url"),
        ({"url": "http://127.0.0.1/hook", "events": ["referral.delivered", "lunch"]}, "events.1"),
        ({"url": "http://127.0.0.1/hook", "events": []}, "events"),
        ({"url": "http://127.0.0.1/hook"}, "events"),
    ],
)
async def test_bad_registrations_name_the_field(
    push: Push, body: dict[str, Any], field: str
) -> None:
    refused = await register(push, body)
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["detail"]] == [field]
    assert await push.count(WebhookRow) == 0


async def test_who_may_register(push: Push) -> None:
    body = {"url": "http://127.0.0.1:9/hook", "events": ["referral.delivered"]}
    assert (await register(push, body, who="KK-EORDAIA")).status_code == 403
    agency = await push.client.post(
        "/v1/centres/KK-KOZANI/webhooks", json=body, headers=push.auth("agencies", "dypa")
    )
    assert agency.status_code == 403
    unknown = await push.client.post(
        "/v1/centres/KK-NOWHERE/webhooks", json=body, headers=push.auth("operators", "operator")
    )
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/hook",  # public, but not https
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest",
        "https://[::1]/hook",
        "https://[::ffff:192.168.1.1]/hook",
        "https://localhost/hook",  # resolves to loopback
    ],
)
async def test_production_refuses_plain_http_and_non_public_addresses(push: Push, url: str) -> None:
    push.state.settings = push.state.settings.model_copy(
        update={
            "environment": "production",
            "webhook_secret_key": SecretStr("A" * 43 + "="),
        }
    )
    refused = await register(push, {"url": url, "events": ["referral.delivered"]})
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["detail"]] == ["url"]
    public = await register(
        push, {"url": "https://93.184.216.34/hook", "events": ["referral.delivered"]}
    )
    assert public.status_code == 201, public.text


async def test_production_without_a_secret_key_registers_nothing(push: Push) -> None:
    push.state.settings = push.state.settings.model_copy(update={"environment": "production"})
    refused = await register(
        push, {"url": "https://93.184.216.34/hook", "events": ["referral.delivered"]}
    )
    assert refused.status_code == 503
    assert await push.count(WebhookRow) == 0


async def test_calls_are_signed_and_carry_the_referral_id(push: Push, receiver: Receiver) -> None:
    created = await register(
        push, {"url": receiver.url, "events": ["referral.delivered", "referral.status_changed"]}
    )
    secret = created.json()["secret"]
    referral_id = await push.refer(FOUR)
    await push.answer(referral_id, "dypa")
    await push.answer(referral_id, "dypa", EnrollmentStatus.ACCEPTED)
    await push.answer(referral_id, "opeka", failed="timeout", dead=True)  # not subscribed
    rows = await drain(push, "delivered")
    assert [(r.type, r.state, r.attempts) for r in rows] == [
        ("referral.delivered", "delivered", 1),
        ("referral.status_changed", "delivered", 1),
    ]
    assert len(receiver.calls) == 2
    for (headers, body), row in zip(receiver.calls, rows, strict=True):
        assert verify(secret, headers, body) == f"evt_{row.event_id}"
        standardwebhooks.Webhook(secret).verify(body, headers)  # an outside verifier agrees
        payload = json.loads(body)
        assert payload["referral_id"] == payload["data"]["referral_id"] == referral_id
        assert payload["type"] == row.type
    assert push.metrics.webhook_deliveries.labels("delivered")._value.get() == 2


async def test_a_failing_receiver_is_retried_then_dead_lettered(
    push: Push, receiver: Receiver
) -> None:
    receiver.status = 500
    await register(push, {"url": receiver.url, "events": ["referral.delivered"]})
    referral_id = await push.refer()
    await push.answer(referral_id, "dypa")
    [row] = await drain(push, "dead_lettered")
    assert row.attempts >= 2 and len(receiver.calls) == row.attempts
    assert (row.last_status, row.referral_id) == (500, referral_id)
    ids = {h["webhook-id"] for h, _ in receiver.calls}
    assert ids == {f"evt_{row.event_id}"}  # the same message id on every retry
    listed = await push.client.get(
        "/v1/ops/webhook-deliveries",
        params={"state": "dead_lettered"},
        headers=push.auth("operators", "operator"),
    )
    assert listed.status_code == 200
    assert [(d["id"], d["state"], d["last_status"]) for d in listed.json()] == [
        (row.id, "dead_lettered", 500)
    ]
    assert push.metrics.webhook_deliveries.labels("dead_lettered")._value.get() == 1
    centre = await push.client.get("/v1/ops/webhook-deliveries", headers=push.auth())
    assert centre.status_code == 403


async def test_a_redirect_is_not_followed(push: Push, receiver: Receiver) -> None:
    receiver.status = 307
    await register(push, {"url": receiver.url, "events": ["referral.delivered"]})
    referral_id = await push.refer()
    await push.answer(referral_id, "dypa")
    [row] = await drain(push, "dead_lettered")
    assert row.last_status == 307
    assert receiver.redirected == 0


async def test_removing_a_webhook_cancels_its_calls(push: Push, receiver: Receiver) -> None:
    created = await register(push, {"url": receiver.url, "events": ["referral.delivered"]})
    referral_id = await push.refer()
    await push.answer(referral_id, "dypa")
    removed = await push.client.delete(
        f"/v1/centres/KK-KOZANI/webhooks/{created.json()['id']}", headers=push.auth()
    )
    assert removed.status_code == 204
    async with push.db.sessions() as session:
        [row] = (await session.execute(select(WebhookDeliveryRow))).scalars()
    assert row.state == "cancelled"
    assert await dispatcher(push).dispatch_once() == 0
    assert receiver.calls == []


@pytest.mark.parametrize("value", ["not base64!", "QUJD", ""])
def test_a_webhook_secret_key_that_is_not_32_bytes_is_refused_by_name(
    value: str, tmp_path: Path
) -> None:
    from pydantic import ValidationError

    from hub.settings import Settings

    with pytest.raises(ValidationError, match="WEBHOOK_SECRET_KEY: 32 random bytes in base64"):
        Settings(var_dir=tmp_path, webhook_secret_key=SecretStr(value))


def test_the_development_key_file_is_made_once_and_private(tmp_path: Path) -> None:
    from hub.settings import Settings

    settings = Settings(var_dir=tmp_path)
    first = secret_key(settings)
    assert first is not None and len(first) == 32
    assert secret_key(settings) == first
    (key_file,) = [p for p in tmp_path.iterdir() if p.is_file()]
    assert key_file.stat().st_mode & 0o077 == 0
