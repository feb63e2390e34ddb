"""Issue 8: PostgreSQL itself stops for 30 s while referrals keep arriving. Writes answer 503
with ``Retry-After``; a caseworker system that retries with the same ``Idempotency-Key``
loses nothing; the hub recovers by itself when the database returns. Reconciled like every
scenario: lost 0, duplicated side effects 0. Runs under ``make test-postgres`` (CI)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests import pgserver
from tests.databases import POSTGRES
from tests.faults.harness import Client, HubProcess, Ports, drain_and_reconcile
from tests.faults.test_scenarios import check, until

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not POSTGRES, reason="needs the PostgreSQL of `make test-postgres`"),
]

OUTAGE_S = 30.0


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubProcess]:
    process = HubProcess(tmp_path / "var", Ports.free(), tmp_path / "logs")
    try:
        yield process
    finally:
        process.stop()
        pgserver.start_again()  # whatever happened, leave the server up for what follows


async def refused_with_retry_after(client: Client) -> tuple[int, str | None]:
    """One POST while the database is down: its status and Retry-After."""
    from hub.samples import sample_referral

    headers = {"Authorization": f"Bearer {client.centre_token}", "Idempotency-Key": "probe-1"}
    async with client.session.post(
        f"{client.hub.api_url}/v1/referrals",
        json=sample_referral(seed=99_999),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=30),
    ) as response:
        return response.status, response.headers.get("Retry-After")


async def test_postgres_stopped_30s_under_load(hub: HubProcess) -> None:
    await asyncio.to_thread(hub.start)
    client = Client(hub)
    try:
        await outage_under_load(hub, client)
    finally:
        await client.close()


async def outage_under_load(hub: HubProcess, client: Client) -> None:
    flowing = asyncio.create_task(client.submit_many("pg", 400, rate_per_s=8))
    await until(lambda: len(client.stats.submitted) >= 60, 60, "60 referrals accepted")
    await asyncio.to_thread(pgserver.stop_running, "fast")
    stopped_at = time.monotonic()
    await asyncio.sleep(3)  # the pools notice
    status, retry_after = await refused_with_retry_after(client)
    await asyncio.sleep(max(OUTAGE_S - (time.monotonic() - stopped_at), 0))
    await asyncio.to_thread(pgserver.start_again)
    back_at = time.monotonic()
    await asyncio.wait_for(flowing, 240)
    report = await drain_and_reconcile(
        "p: PostgreSQL stopped 30 s under load", client, timeout_s=240
    )
    report.extra = (
        f"outage_s={back_at - stopped_at:.0f} during_outage={status}/Retry-After:{retry_after} "
        f"non_202={client.stats.non_202} answers={dict(client.stats.answers)}"
    )
    check(report, hub)
    assert (status, retry_after) == (503, "5"), report.extra
    assert client.stats.answers["503"] > 0, "no write met the outage"
