"""Integration harness: the real embedded broker (Tansu over the Kafka wire protocol), the
real ΔΥΠΑ sandbox over HTTP on loopback, and the hub exactly as ``make run`` composes it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from diasyndesi_sdk.connector import KEEPALIVE_S
from hub.broker import free_port
from hub.embedded import Embedded
from hub.errors import ConfigurationError
from hub.families import family_spec
from hub.registry import Registry
from hub.runtime import Hub
from hub.settings import (
    AgencyConnection,
    ConsumerSettings,
    PushSettings,
    RetrySettings,
    Settings,
)
from tests.databases import fresh_database_url


def make_settings(var_dir: Path) -> Settings:
    return Settings(
        var_dir=var_dir,
        database_url=fresh_database_url(var_dir),
        api_port=free_port(),
        sandbox_port_base=0,  # every family's sandbox on a free port
        embedded_broker_port=free_port(),
        sandbox_decision_delay_s=0.3,
        status_poll_s=0.5,
        retry=RetrySettings(
            attempts=3,
            initial_s=0.05,
            max_s=0.5,
            jitter_s=0.05,
            topic_delays_s=[0.5, 1.0, 2.0],
            breaker_threshold=50,
            breaker_cooldown_s=1.0,
        ),
        consumer=ConsumerSettings(session_timeout_ms=6000, heartbeat_interval_ms=1000),
        push=PushSettings(
            sse_poll_s=0.1,
            webhook_poll_s=0.1,
            webhook_initial_s=0.1,
            webhook_max_s=0.5,
            webhook_retry_for_s=3.0,
        ),
        log_level="WARNING",
    )


class Stack:
    """A running embedded stack plus the calls a caseworker system would make."""

    def __init__(self, embedded: Embedded, session: aiohttp.ClientSession) -> None:
        self.embedded = embedded
        self.session = session

    @property
    def hub(self) -> Hub:
        assert self.embedded.hub is not None
        return self.embedded.hub

    @property
    def url(self) -> str:
        return self.embedded.settings.api_url

    def sandbox_url(self, agency: str = "dypa") -> str:
        """Where an agency's ``/_sandbox/*`` routes are (municipalities share one server)."""
        assert self.embedded.sandboxes is not None
        family = Registry.load(self.embedded.settings.registry_dir).agencies[agency].family
        server = self.embedded.sandboxes.servers[family]
        return family_spec(family).load_sandbox().admin_url(agency, server.url)

    def token(self, kind: str = "centres", who: str = "KK-KOZANI") -> str:
        return self.embedded.credentials[kind][who]

    async def submit(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        async with self.session.post(
            f"{self.url}/v1/referrals",
            json=body,
            headers={
                "Authorization": f"Bearer {self.token()}",
                "Idempotency-Key": key or str(uuid.uuid4()),
            },
        ) as response:
            assert response.status == 202, await response.text()
            answer: dict[str, Any] = await response.json()
            return answer

    async def view(self, referral_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{self.url}/v1/referrals/{referral_id}",
            headers={"Authorization": f"Bearer {self.token()}"},
        ) as response:
            assert response.status == 200, await response.text()
            view: dict[str, Any] = await response.json()
            return view

    async def sandbox(self, path: str, agency: str = "dypa") -> Any:
        url = f"{self.sandbox_url(agency)}/_sandbox/{path}"
        async with self.session.get(url, ssl=False) as response:  # a dev certificate, or none
            return await response.json()

    async def faults(self, agency: str = "dypa", path: str = "faults", **knobs: Any) -> None:
        url = f"{self.sandbox_url(agency)}/_sandbox/{path}"
        async with self.session.post(url, json=knobs, ssl=False) as r:
            assert r.status == 200, await r.text()

    async def wait_for(
        self,
        referral_ids: list[str],
        done: Callable[[dict[str, Any]], bool],
        timeout_s: float = 60.0,
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            views = [await self.view(i) for i in referral_ids]
            if all(done(v) for v in views):
                return views
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last views: {views}")
            await asyncio.sleep(0.1)


def delivered(view: dict[str, Any]) -> bool:
    return all(a["delivery"] == "delivered" for a in view["agencies"])


def decided(view: dict[str, Any]) -> bool:
    return all(a["status"] == "accepted" for a in view["agencies"])


async def start_embedded(
    folder: Path, attempts: int = 3, agencies: dict[str, AgencyConnection] | None = None
) -> Embedded:
    """The embedded stack on free ports. ``free_port`` only finds a port that was free a
    moment ago: when another process takes one first the start is refused ("cannot
    listen"), so the half-started stack is stopped and started again on other ports."""
    for attempt in range(1, attempts + 1):
        settings = make_settings(folder / f"try-{attempt}")
        if agencies:  # what an operator set, over the sandboxes' own settings
            settings = settings.model_copy(update={"agencies": agencies})
        embedded = Embedded(settings)
        try:
            await embedded.start()
        except ConfigurationError as exc:
            await embedded.stop()  # the broker subprocess and any server already up
            if "cannot listen" not in str(exc) or attempt == attempts:
                raise
            continue
        return embedded
    raise AssertionError("unreachable")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    embedded = await start_embedded(tmp_path)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
        ) as session:
            yield Stack(embedded, session)
    finally:
        await embedded.stop()


StackFactory = Callable[[], Awaitable[Stack]]
