"""Issue 8, with the real broker and the real runner: one bad record is dead-lettered and the
agency's consumer goes on; a worker serves /metrics, /healthz and /readyz on its own port,
and a crashed task turns it red until the supervisor has restarted it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from diasyndesi_sdk.connector import Delivery, Receipt
from hub.broker import EmbeddedBroker
from hub.mapping import Mapping
from hub.runtime import Hub
from hub.samples import sample_referral
from hub.settings import AgencyConnection
from tests.integration.conftest import Stack, make_settings

BAD_MAPPING = "KK-KOZANI/2026/BAD-MAPPING"
LONG_REFERENCE = "KK-KOZANI/2026/LONG-REFERENCE"


class ChokesOn:
    """The real mapping, raising ValueError (quoting a value) for one consent document."""

    def __init__(self, real: Mapping) -> None:
        self.real = real

    def apply(self, referral: dict[str, Any]) -> dict[str, Any]:
        if referral["consent"]["document_ref"] == BAD_MAPPING:
            raise ValueError(f"cannot format {referral['beneficiary']['birth_date']!r}")
        return self.real.apply(referral)


def referral(seed: int, document_ref: str) -> dict[str, Any]:
    body = sample_referral(programmes=["UNEMPLOYMENT_REGISTRATION"], seed=seed)
    body["consent"]["document_ref"] = document_ref
    return body


async def test_a_mapping_error_and_an_overlong_reference_do_not_stop_the_consumer(
    stack: Stack,
) -> None:
    runner = stack.hub.runners["dypa"]
    runner.mapping = ChokesOn(runner.mapping)  # type: ignore[assignment]
    deliver = runner.connector.deliver

    async def long_reference(delivery: Delivery) -> Receipt:
        receipt = await deliver(delivery)  # the agency really takes it
        if delivery.payload["consent"]["reference"] == LONG_REFERENCE:
            return Receipt(reference="DYPA-" + "7" * 60)  # 65 characters
        return receipt

    runner.connector.deliver = long_reference  # type: ignore[method-assign]
    bad = await stack.submit(referral(401, BAD_MAPPING))
    long = await stack.submit(referral(402, LONG_REFERENCE))
    good = await stack.submit(referral(403, "KK-KOZANI/2026/0403"))

    def settled(view: dict[str, Any]) -> bool:
        return view["agencies"][0]["delivery"] in {"delivered", "dead_lettered"}

    views = await stack.wait_for([bad["id"], long["id"], good["id"]], settled, timeout_s=30)
    states = [(v["agencies"][0]["delivery"], v["agencies"][0]["error_class"]) for v in views]
    assert states == [
        ("dead_lettered", "mapping_error"),
        ("dead_lettered", "invalid_receipt"),
        ("delivered", None),
    ]
    operator = {"Authorization": f"Bearer {stack.token('operators', 'operator')}"}
    async with stack.session.get(f"{stack.url}/v1/ops/dlq", headers=operator) as response:
        letters = await response.json()
    assert sorted((d["referral_id"], d["error_class"], d["permanent"]) for d in letters) == sorted(
        [(bad["id"], "mapping_error", True), (long["id"], "invalid_receipt", True)]
    )
    assert stack.hub.supervisor.restarts("connector:dypa") == 0, "the consumer never died"
    async with stack.session.get(f"{stack.url}/readyz") as response:
        assert response.status == 200, await response.text()
    async with stack.session.get(f"{stack.url}/metrics") as response:
        metrics = await response.text()
    assert (
        'diasyndesi_record_errors_total{consumer="dypa",error_class="invalid_receipt"} 1.0'
    ) in metrics
    birth = referral(401, BAD_MAPPING)["beneficiary"]["birth_date"]
    assert all(birth not in (d.get("reason") or "") for d in letters)


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Hub]:
    """A worker as `diasyndesi worker dypa` composes it: connectors only, its own port."""
    broker = EmbeddedBroker()
    await broker.astart()
    dypa = AgencyConnection(base_url="http://127.0.0.1:9", secret=SecretStr("not-called"))
    settings = make_settings(tmp_path).model_copy(
        update={
            "observability_port": 0,
            "task_restart_initial_s": 1.0,
            "agencies": {"dypa": dypa},
        }
    )
    hub = Hub(
        settings,
        broker.bootstrap_servers,
        connectors=["dypa"],
        serve_api=False,
        run_relay=False,
        run_projector=False,
        observability=True,
    )
    try:
        await hub.start()
        yield hub
    finally:
        await hub.stop()
        await broker.astop()


async def readyz(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{url}/readyz") as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_a_worker_serves_health_and_metrics_and_is_red_while_a_task_is_down(
    worker: Hub,
) -> None:
    url = worker.health_url
    assert not url.endswith(":0") and ":8000" not in url
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200
        status, body = await readyz(session, url)
        assert status == 503 and body["checks"]["consumers"].startswith("not joined")
        await worker.wait_consumers_assigned()
        assert await readyz(session, url) == (
            200,
            {"ready": True, "checks": {"tasks": "ok", "consumers": "ok"}},
        )

        breaker = worker.runners["dypa"].breaker
        allows = breaker.allows

        def crash() -> bool:  # the loop asks the breaker before every fetch
            breaker.allows = allows  # type: ignore[method-assign]
            raise RuntimeError("a bug in the loop")

        breaker.allows = crash  # type: ignore[method-assign]
        deadline = time.monotonic() + 5
        while (await readyz(session, url))[0] == 200:
            assert time.monotonic() < deadline, "never went red"
            await asyncio.sleep(0.05)
        status, body = await readyz(session, url)
        assert status == 503
        assert body["checks"]["tasks"] == "down: connector:dypa"
        async with session.get(f"{url}/metrics") as response:
            metrics = await response.text()
        assert 'diasyndesi_task_restarts_total{task="connector:dypa"} 1.0' in metrics
        assert 'diasyndesi_task_up{task="connector:dypa"} 0.0' in metrics

        deadline = time.monotonic() + 30  # restart after 1 s, then a group join (~3 s)
        while (await readyz(session, url))[0] != 200:
            assert time.monotonic() < deadline, f"never green again: {await readyz(session, url)}"
            await asyncio.sleep(0.1)
        async with session.get(f"{url}/metrics") as response:
            assert 'diasyndesi_task_up{task="connector:dypa"} 1.0' in await response.text()
