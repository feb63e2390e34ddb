"""The spine end to end: a referral is stored, published on Kafka, delivered once to the
ΔΥΠΑ sandbox in ΔΥΠΑ's format, and the agency's answer comes back into the read model."""

from __future__ import annotations

import asyncio
import json

from aiokafka import AIOKafkaProducer
from sqlalchemy import select

from diasyndesi_sdk.connector import idempotency_key
from hub.broker import EmbeddedBroker
from hub.db import Database, DeliveryRow
from hub.mapping import load_mapping
from hub.runtime import Hub
from hub.samples import sample_referral
from hub.settings import packaged_dir
from schemas.events import TOPIC_REFERRALS
from schemas.referral import Referral
from tests.integration.conftest import Stack, decided, delivered


async def test_referral_is_delivered_once_mapped_and_its_status_comes_back(stack: Stack) -> None:
    body = sample_referral(seed=101)
    answer = await stack.submit(body)
    assert answer["routed"] == ["dypa"]
    [view] = await stack.wait_for([answer["id"]], decided)
    [agency] = view["agencies"]
    assert agency["delivery"] == "delivered"
    assert agency["attempts"] == 1
    assert agency["reference"].startswith("DYPA-")
    kinds = [t["kind"] for t in view["timeline"]]
    # The agency's own "received" may be stamped before the hub saw the HTTP answer.
    assert kinds[:2] == ["submitted", "published"]
    assert sorted(kinds[2:]) == ["delivered", "status", "status"]
    assert [t["detail"] for t in view["timeline"] if t["kind"] == "status"] == [
        "received",
        "accepted",
    ]

    [received] = await stack.sandbox("received")
    assert received["duplicate"] is False
    assert received["referral_id"] == answer["id"]
    # The agency got exactly the mapped payload of the canonical referral, nothing else.
    async with stack.hub.db.sessions() as session:
        from hub.db import OutboxRow, ReferralRow

        row = await session.get(ReferralRow, answer["id"])
        assert row is not None
        event_id = (
            (
                await session.execute(
                    OutboxRow.__table__.select().where(
                        OutboxRow.referral_id == answer["id"],
                        OutboxRow.event_type == "gr.kk.referral.submitted.v1",
                    )
                )
            )
            .first()
            .event_id
        )  # type: ignore[union-attr]
    expected = load_mapping(packaged_dir("mappings") / "dypa.yaml", "dypa").apply(
        Referral.model_validate(row.body).model_dump(mode="json")
    )
    assert received["payload"] == expected
    assert received["idempotency_key"] == idempotency_key(event_id, "dypa")
    assert body["beneficiary"]["afm"] not in json.dumps(received["payload"])
    assert (await stack.sandbox("stats")) == {"received": 1, "accepted": 1, "duplicates": 0}

    async with stack.session.get(f"{stack.url}/metrics") as response:
        metrics = await response.text()
    assert 'diasyndesi_deliveries_total{connector="dypa",outcome="delivered"} 1.0' in metrics
    assert 'diasyndesi_submit_to_delivered_seconds_count{connector="dypa"} 1.0' in metrics
    assert body["beneficiary"]["identifier"]["value"] not in metrics
    async with stack.session.get(f"{stack.url}/readyz") as response:
        assert response.status == 200


async def test_an_idempotent_resubmission_reaches_the_agency_once(stack: Stack) -> None:
    body = sample_referral(seed=102)
    first = await stack.submit(body, key="caseworker-retry-1")
    second = await stack.submit(body, key="caseworker-retry-1")
    assert first["id"] == second["id"]
    await stack.wait_for([first["id"]], delivered)
    assert (await stack.sandbox("stats"))["accepted"] == 1


async def test_broker_down_at_submit_then_delivered_when_it_returns(stack: Stack) -> None:
    warm = await stack.submit(sample_referral(seed=103))
    await stack.wait_for([warm["id"]], delivered)  # consumer groups have joined
    port = stack.embedded.broker.port
    await stack.embedded.broker.astop()
    waiting = [(await stack.submit(sample_referral(seed=104 + i)))["id"] for i in range(3)]
    for referral_id in waiting:
        view = await stack.view(referral_id)
        assert view["agencies"][0]["delivery"] == "pending"
    stack.embedded.broker = EmbeddedBroker(port)
    await stack.embedded.broker.astart()
    await stack.wait_for(waiting, delivered, timeout_s=90)
    stats = await stack.sandbox("stats")
    accepted = {r["referral_id"] for r in await stack.sandbox("received") if not r["duplicate"]}
    assert accepted == {warm["id"], *waiting}
    assert stats["accepted"] == 4


async def test_broker_restarted_empty_after_traffic_loses_nothing(stack: Stack) -> None:
    """The consumers' positions point into the dead broker's logs while the fresh broker's
    fill up again from offset 0. (The race that skipped records needs a longer outage than
    a unit of this suite can afford; ``make faults`` scenario b2 reproduces it.)"""
    warm = [(await stack.submit(sample_referral(seed=150 + i)))["id"] for i in range(16)]
    await stack.wait_for(warm, decided)  # outcomes and statuses consumed: positions advanced
    port = stack.embedded.broker.port
    await stack.embedded.broker.astop()
    waiting = [(await stack.submit(sample_referral(seed=170 + i)))["id"] for i in range(40)]
    stack.embedded.broker = EmbeddedBroker(port)
    await stack.embedded.broker.astart()
    await stack.wait_for(waiting, decided, timeout_s=90)
    accepted = {r["referral_id"] for r in await stack.sandbox("received") if not r["duplicate"]}
    assert accepted == {*warm, *waiting}


async def test_hub_restarted_mid_flight_redrives_without_duplicates(stack: Stack) -> None:
    warm = await stack.submit(sample_referral(seed=110))
    await stack.wait_for([warm["id"]], delivered)
    await stack.faults(latency_ms=400)
    ids = [(await stack.submit(sample_referral(seed=111)))["id"]]
    await stack.wait_for(ids, delivered, timeout_s=30)
    # The rest stay in flight at the agency (answers 5 s away) when the hub crashes: with
    # one latency for all, all eight finished within the same few milliseconds, and a
    # crash after the first delivery could come after the last (flaky).
    await stack.faults(latency_ms=5000)
    ids += [(await stack.submit(sample_referral(seed=112 + i)))["id"] for i in range(7)]
    await asyncio.sleep(1.0)  # the deliveries are out, waiting for the agency's answers
    await stack.hub.abort()  # crash: no graceful drain, no more commits
    db = Database(stack.hub.settings.database)
    async with db.sessions() as session:
        states = (await session.execute(select(DeliveryRow.delivery))).scalars().all()
    await db.dispose()
    assert states.count("delivered") < len(ids) + 1, "everything finished before the crash"
    await stack.faults()  # agency healthy again
    restarted = Hub(stack.hub.settings, stack.embedded.broker.bootstrap_servers)
    stack.embedded.hub = restarted
    await restarted.start()
    await stack.wait_for(ids, delivered, timeout_s=90)
    received = await stack.sandbox("received")
    new_effects = [r["referral_id"] for r in received if not r["duplicate"]]
    assert sorted(new_effects) == sorted([warm["id"], *ids])  # each exactly once


async def test_poison_records_do_not_stop_the_connector(stack: Stack) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.embedded.broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(TOPIC_REFERRALS, b"\xff\x00 not json", key=b"junk")
        await producer.send_and_wait(
            TOPIC_REFERRALS,
            b'{"referral": {}}',
            key=b"junk",
            headers=[
                ("ce_type", b"gr.kk.referral.submitted.v1"),
                ("ce_id", b"x"),
                ("ce_source", b"/evil"),
                ("ce_specversion", b"1.0"),
            ],
        )
    finally:
        await producer.stop()
    answer = await stack.submit(sample_referral(seed=120))
    await stack.wait_for([answer["id"]], delivered)
    async with stack.session.get(f"{stack.url}/metrics") as response:
        metrics = await response.text()
    assert 'diasyndesi_poison_records_total{consumer="dypa"} 2.0' in metrics
