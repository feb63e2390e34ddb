"""Issue 4, "Nothing lost, nothing duplicated": fault scenarios against the real
``diasyndesi up``, each ending in a reconciliation of the hub's read model, the agencies'
side effects and the dead letters (see harness.py). Run with ``make faults``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from diasyndesi_sdk.webhooks import verify
from tests.faults.harness import (
    SETTLED,
    SUMMARIES,
    Client,
    HubProcess,
    Ports,
    Reconciliation,
    ReplacementBroker,
    drain_and_reconcile,
    pid_alive,
    reconcile_withdrawals,
)
from tests.unit.test_centre_events import Stream
from tests.unit.test_push_webhooks import Receiver

pytestmark = pytest.mark.faults

LOG_NEEDLES = (
    "child exited",
    "unexpectedly",
    "re-driv",
    "marker",
    "crashed",
    "Traceback",
    "rror",
    "lost",
    "not published",
    "waiting for the broker",
)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubProcess]:
    process = HubProcess(tmp_path / "var", Ports.free(), tmp_path / "logs")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[HubProcess], Client]]:
    clients: list[Client] = []

    def make(hub: HubProcess) -> Client:
        clients.append(Client(hub))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def check(report: Reconciliation, hub: HubProcess) -> None:
    SUMMARIES.append(report.summary())
    print(report.summary())
    if report.ok:
        return
    lines = hub.stderr_lines(*LOG_NEEDLES)
    raise AssertionError(
        f"{report.summary()}\n{report.details()}\nlogs: {hub.log_dir}\n" + "\n".join(lines[:40])
    )


async def gather_bounded(coro: Awaitable[object], timeout_s: float) -> None:
    await asyncio.wait_for(coro, timeout_s)


# --------------------------------------------------------------------------- a


async def test_a0_up_restarts_after_its_process_group_is_sigkilled(hub: HubProcess) -> None:
    hub.start()
    broker = hub.broker_pid()
    children = hub.tree()
    assert len(children) >= 4, f"broker, serve, worker, sandbox expected: {children}"
    hub.kill_group()
    await until(lambda: not pid_alive(broker), 5, "the orphaned broker to go away")
    await until(lambda: not any(map(pid_alive, children)), 20, "every child of `up` to go")
    await asyncio.to_thread(hub.start)


async def test_a_whole_tree_sigkilled_mid_run_then_restarted(
    hub: HubProcess, client_for: Callable[[HubProcess], Client]
) -> None:
    """kill -9 of everything while 100 referrals flow and 10 of them are being withdrawn;
    `up` again on the same VAR_DIR. Every withdrawal accepted before the kill reaches each
    of its agencies exactly once after recovery, and none of them holds the referral."""
    hub.extra_env = {
        "PUSH__SSE_HEARTBEAT_S": "1",
        "PUSH__WEBHOOK_INITIAL_S": "0.2",
        "PUSH__WEBHOOK_MAX_S": "2",
    }
    hub.start()
    client = client_for(hub)
    receiver = Receiver()
    await receiver.start()
    secret = await register_webhook(client, receiver.url)
    flowing = asyncio.create_task(client.submit_many("crash", 100, rate_per_s=25))
    await until(lambda: len(client.stats.submitted) >= 40, 30, "40 referrals accepted")
    # some delivered by now, some in flight, some not yet read: withdraw ten of them
    chosen = [s.referral_id for s in client.stats.submitted[5:35:3]]
    withdrawn = {rid for rid in chosen if await client.withdraw(rid) == "202"}
    assert len(withdrawn) == len(chosen)
    hub.kill()
    killed_at = time.monotonic()
    ready_s = await asyncio.to_thread(hub.start)
    await gather_bounded(flowing, 120)
    report = await drain_and_reconcile("a: whole tree SIGKILL + restart", client)
    routed = {s.referral_id: s.routed for s in client.stats.submitted}
    withdrawn_pairs = {(rid, agency) for rid in withdrawn for agency in routed[rid]}
    problems = reconcile_withdrawals(
        withdrawn,
        routed,
        await client.wait_withdrawn(withdrawn_pairs),
        await client.sandbox_records(),
        await client.sandbox_withdrawals(),
    )
    report.extra = (
        f"accepted_before_kill>=40 withdrawn_before_kill={len(withdrawn)} "
        f"withdrawal_problems={len(problems)} restart_ready_s={ready_s:.1f} "
        f"down_s={hub.started_at - killed_at:.1f} retried_posts={client.stats.non_202} "
        f"orphaned_brokers={len(hub.orphans_seen)}"
    )
    check(report, hub)
    assert not problems, "\n".join(problems[:20])
    delivered = {
        pair for pair, state in report.states.items() if state.get("delivery") == "delivered"
    }
    try:
        await check_centre_told(client, receiver, secret, delivered)
    finally:
        await receiver.stop()
    if hub.database_url:  # on PostgreSQL (`make test-postgres`) nothing is written to SQLite
        assert not list(hub.var_dir.rglob("*.db")), list(hub.var_dir.rglob("*.db"))


async def register_webhook(client: Client, url: str) -> str:
    async with client.session.post(
        f"{client.hub.api_url}/v1/centres/KK-KOZANI/webhooks",
        json={"url": url, "events": ["referral.delivered"]},
        headers={"Authorization": f"Bearer {client.centre_token}"},
    ) as response:
        assert response.status == 201, await response.text()
        secret: str = (await response.json())["secret"]
        return secret


async def check_centre_told(
    client: Client, receiver: Receiver, secret: str, delivered: set[tuple[str, str]]
) -> None:
    """After the kill and the restart: the centre's event stream, read from the start, tells
    each delivered pair exactly once, in cursor order; the webhook got a signed call for
    each (a repeat only under the same ``webhook-id``)."""
    told: list[tuple[str, str]] = []
    ids: list[int] = []
    async with aiohttp.ClientSession() as session:
        response = await session.get(
            f"{client.hub.api_url}/v1/centres/KK-KOZANI/events",
            params={"after": 0},
            headers={"Authorization": f"Bearer {client.centre_token}"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=30),
        )
        assert response.status == 200
        stream = Stream(response)
        while not delivered <= set(told):
            message = await asyncio.wait_for(stream.next(), 60)
            ids.append(int(message["id"]))
            if message["event"] == "referral.delivered":
                told.append((message["data"]["referral_id"], message["data"]["agency"]))
        response.close()
    assert ids == sorted(set(ids)), "event ids repeat or go back"
    assert len(told) == len(set(told)), "a delivery told twice"

    def calls() -> dict[tuple[str, str], set[str]]:
        by_pair: dict[tuple[str, str], set[str]] = {}
        for headers, body in receiver.calls:
            payload: dict[str, Any] = json.loads(body)
            pair = (payload["referral_id"], payload["data"]["agency"])
            by_pair.setdefault(pair, set()).add(verify(secret, headers, body))
        return by_pair

    while not delivered <= set(calls()):
        await asyncio.wait_for(receiver.next_call(), 60)
    assert all(len(seen) == 1 for seen in calls().values()), "one webhook-id per event"


# --------------------------------------------------------------------------- b


async def test_b_broker_sigkilled_down_10s_then_replaced(
    hub: HubProcess, client_for: Callable[[HubProcess], Client]
) -> None:
    """Only the Tansu child dies; referrals keep arriving (API must answer 202 throughout);
    a fresh, empty broker comes up on the same port after ~10 s (the test's own: `up` is told
    not to restart its broker, so the outage lasts as long as the scenario says)."""
    await broker_outage(
        hub, client_for, "b: broker SIGKILL, 10 s down, replaced", 10, 150, rate_per_s=8
    )


async def test_b2_broker_down_for_two_minutes_while_referrals_keep_arriving(
    hub: HubProcess, client_for: Callable[[HubProcess], Client]
) -> None:
    """The same, for minutes: two minutes without a broker while centres keep submitting.
    Producers, consumers and the relay must keep retrying (bounded, never wedged) and the
    outbox must hold every referral until a broker is back."""
    await broker_outage(
        hub, client_for, "b2: broker SIGKILL, 120 s down, replaced", 120, 300, rate_per_s=2
    )


async def broker_outage(
    hub: HubProcess,
    client_for: Callable[[HubProcess], Client],
    scenario: str,
    outage_s: float,
    count: int,
    *,
    rate_per_s: float,
) -> None:
    hub.extra_env["UP_RESTART_BROKER"] = "false"  # the replacement below ends the outage
    hub.start()
    client = client_for(hub)
    replacement = ReplacementBroker(hub.ports.broker)
    try:
        flowing = asyncio.create_task(client.submit_many("broker", count, rate_per_s=rate_per_s))
        await until(lambda: len(client.stats.submitted) >= 30, 30, "30 referrals accepted")
        hub.kill_broker()
        killed_at = time.monotonic()
        before = len(client.stats.submitted)
        await asyncio.sleep(outage_s)
        during_outage = len(client.stats.submitted) - before
        assert hub.running, f"`up` died without its broker:\n{hub.log_tail()}"
        replacement.start()
        replaced_at = time.monotonic()
        await gather_bounded(flowing, count / rate_per_s + 120)
        report = await drain_and_reconcile(scenario, client, timeout_s=180)
        settled_after_replacement = time.monotonic() - replaced_at
        report.extra = (
            f"accepted_during_outage={during_outage} non_202_answers={client.stats.non_202} "
            f"outage_s={replaced_at - killed_at:.1f} "
            f"settled_after_replacement_s={settled_after_replacement:.1f}"
        )
        check(report, hub)
        assert client.stats.non_202 == 0, f"API answers during outage: {client.stats.answers}"
        assert during_outage >= outage_s * rate_per_s * 0.8, "submissions stalled in the outage"
    finally:
        hub.stop()
        replacement.stop()


# --------------------------------------------------------------------------- c


async def test_c_flaky_agency_and_15s_outage_of_another(
    hub: HubProcess, client_for: Callable[[HubProcess], Client]
) -> None:
    """ΔΥΠΑ fails 20% of calls with 503; the grocery is out for 15 s; 200 referrals."""
    hub.start()
    client = client_for(hub)
    await client.set_faults("dypa", fail_rate=0.2, status=503)
    await client.set_faults("kozani-social-grocery", outage_s=15, status=503)
    outage_ends = time.monotonic() + 15
    outage_ends_wall = datetime.now(UTC) + timedelta(seconds=15)
    await gather_bounded(client.submit_many("flaky", 200, rate_per_s=40), 120)
    report = await drain_and_reconcile("c: 20% 503 at dypa + 15 s grocery outage", client)
    settled_at = time.monotonic()  # within one poll (0.5 s) plus the ledger reads
    last = {
        agency: round((at - outage_ends_wall).total_seconds(), 1)
        for agency, at in report.last_delivered_by_agency().items()
    }
    report.extra = (
        f"drain_after_outage_s={settled_at - outage_ends:.1f} last_delivered_after_outage_s={last}"
    )
    check(report, hub)


# --------------------------------------------------------------------------- d


async def test_d_slow_then_hung_agency_does_not_hold_back_the_others(
    hub: HubProcess, client_for: Callable[[HubProcess], Client]
) -> None:
    """ΔΥΠΑ answers in 1.5 s, then hangs; the other agencies keep delivering; then ΔΥΠΑ
    recovers and everything reconciles."""
    hub.start()
    client = client_for(hub)
    await client.set_faults("dypa", latency_ms=1500)
    slow = await client.submit_many("slow", 30, rate_per_s=15)
    await client.set_faults("dypa", hang=True)
    hung = await client.submit_many("hung", 30, rate_per_s=15)
    hung_at = time.monotonic()

    others = {(s.referral_id, a) for s in slow + hung for a in s.routed if a != "dypa"}
    states, others_s, settled = await client.wait_settled(others, timeout_s=60)
    assert settled, f"other agencies held back by a hung ΔΥΠΑ: {states}"
    assert all(state["delivery"] == "delivered" for state in states.values())
    hung_dypa = {(s.referral_id, "dypa") for s in hung}
    dypa_states = await client.hub_states({rid for rid, _ in hung_dypa})
    still_open = [p for p in hung_dypa if dypa_states[p]["delivery"] not in SETTLED]
    delivered_while_hung = len(hung_dypa) - len(still_open)

    # keep the hang a little longer than one client timeout (10 s), then recover
    await asyncio.sleep(max(0.0, 12 - (time.monotonic() - hung_at)))
    await client.set_faults("dypa")
    cleared_at = time.monotonic()
    report = await drain_and_reconcile("d: dypa slow then hung, then recovered", client)
    report.extra = (
        f"others_settled_while_hung_s={others_s:.1f} hung_dypa_open={len(still_open)}/"
        f"{len(hung_dypa)} drain_after_clear_s={time.monotonic() - cleared_at:.1f}"
    )
    check(report, hub)
    assert delivered_while_hung == 0, "ΔΥΠΑ deliveries completed while its sandbox hung"
