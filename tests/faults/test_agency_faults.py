"""More fault scenarios against the real ``diasyndesi up`` (see harness.py), each ending in
the same three-ledger reconciliation as test_scenarios.py:

- e: an agency throttles (429 + Retry-After) and the hub must wait as long as it is told;
- f: the agency does the work but its answer is lost on the way back (a TCP proxy resets
  the connection), so the hub retries something that already happened;
- g: the same event arrives twice on ``kk.referrals.v1``, next to poison bytes and a
  CloudEvent whose data fails the schema; nothing of the citizen reaches the logs.

Run with ``make faults``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from hub.events import SOURCE
from hub.samples import sample_referral
from schemas.events import REFERRAL_SUBMITTED, TOPIC_DELIVERIES, TOPIC_REFERRALS
from tests.faults.harness import EVERY_FAMILY, Client, HubProcess, Ports, drain_and_reconcile
from tests.faults.proxy import FaultProxy
from tests.faults.test_scenarios import check

pytestmark = pytest.mark.faults

CONNECTORS = (
    "opeka",
    "dypa",
    "kozani-social-grocery",
    "kozani-social-service",
    "karpenisi-social-service",
)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubProcess]:
    process = HubProcess(tmp_path / "var", Ports.free(), tmp_path / "logs")
    try:
        yield process
    finally:
        await asyncio.to_thread(process.stop)


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[HubProcess], Client]]:
    clients: list[Client] = []

    def make(hub: HubProcess) -> Client:
        clients.append(Client(hub))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def sandbox_get(client: Client, agency: str, what: str) -> dict[str, Any]:
    """``GET /_sandbox/{what}`` of one agency (``faults`` or ``stats``)."""
    url = f"{client.hub.ports.sandbox_url(agency)}/_sandbox/{what}"
    async with client.session.get(url) as response:
        response.raise_for_status()
        answer: dict[str, Any] = await response.json()
        return answer


# --------------------------------------------------------------------------- e


async def test_e_throttling_agency_429_retry_after_is_honoured(
    hub: HubProcess, client_for: Callable[[HubProcess], Client]
) -> None:
    """ΔΥΠΑ answers ~40% of calls 429 with ``Retry-After: 2``; 100 five-agency referrals.
    The sandbox counts every repeat of an idempotency key that comes before its
    Retry-After has passed: there must be none, and nothing may be dead-lettered."""
    await asyncio.to_thread(hub.start)
    client = client_for(hub)
    await client.set_faults("dypa", fail_rate=0.4, status=429, retry_after_s=2)
    await asyncio.wait_for(client.submit_many("throttled", 100, rate_per_s=20), 120)
    report = await drain_and_reconcile(
        "e: 40% 429 + Retry-After 2 s at dypa", client, timeout_s=240
    )
    faults = await sandbox_get(client, "dypa", "faults")
    stats = await sandbox_get(client, "dypa", "stats")
    report.extra = (
        f"retry_after_sent={faults['retry_after_sent']} early_retries={faults['early_retries']} "
        f"dypa_accepted={stats['accepted']}"
    )
    check(report, hub)
    assert report.dead_letters == 0, f"dead letters under throttling: {report.dead_letters}"
    assert faults["retry_after_sent"] > 0, "the sandbox never throttled: the test proves nothing"
    assert faults["early_retries"] == 0, "the hub came back before the agency's Retry-After"


async def test_e2_a_retry_after_longer_than_the_quick_retries_goes_to_a_retry_topic(
    tmp_path: Path, client_for: Callable[[HubProcess], Client]
) -> None:
    """ΔΥΠΑ answers ~20% of calls 429 with ``Retry-After: 8``: longer than the in-process
    backoff cap (5 s), and longer than the retry topics' own delay here (3 s). The hub must
    not come back within 8 s: the quick attempts stop and the retry topic waits for the
    hint, not for its shorter delay. Five 3 s levels, so a record throttled again and
    again is still not dead-lettered."""
    hub = HubProcess(
        tmp_path / "var",
        Ports.free(),
        tmp_path / "logs",
        extra_env={"RETRY__TOPIC_DELAYS_S": "[3, 3, 3, 3, 3]"},
    )
    try:
        await asyncio.to_thread(hub.start)
        client = client_for(hub)
        await client.set_faults("dypa", fail_rate=0.2, status=429, retry_after_s=8)
        await asyncio.wait_for(client.submit_many("long-hint", 40, rate_per_s=20), 120)
        report = await drain_and_reconcile(
            "e2: 20% 429 + Retry-After 8 s (> max_s, > topic delay) at dypa",
            client,
            timeout_s=180,
        )
        faults = await sandbox_get(client, "dypa", "faults")
        retried = sum(
            1
            for (_, agency), state in report.states.items()
            if agency == "dypa" and state.get("attempts", 0) > 1
        )
        report.extra = (
            f"retry_after_sent={faults['retry_after_sent']} "
            f"early_retries={faults['early_retries']} dypa_pairs_retried={retried}"
        )
        check(report, hub)
    finally:
        await asyncio.to_thread(hub.stop)
    assert report.dead_letters == 0
    assert faults["retry_after_sent"] > 0 and retried > 0, "nothing was throttled"
    assert faults["early_retries"] == 0, "the hub came back before the agency's Retry-After"


# --------------------------------------------------------------------------- f


async def proxy_in_front_of(port: int, ports: Ports) -> FaultProxy:
    """A started proxy to ``port`` that did not get one of ``ports`` (just freed, so the
    kernel may hand one out again)."""
    while True:
        proxy = await FaultProxy("127.0.0.1", port, seed=20261121).start()
        if proxy.port not in astuple(ports):
            return proxy
        await proxy.stop()


async def test_f_agency_did_the_work_but_the_answer_was_lost(
    tmp_path: Path, client_for: Callable[[HubProcess], Client]
) -> None:
    """A proxy in front of ΔΥΠΑ forwards every call but throws away ~30% of the answers
    (connection reset as the answer starts): the agency has registered the citizen, the
    hub never heard. The hub must retry with the same key and the agency absorb it."""
    ports = Ports.free()  # first: the proxy must know ΔΥΠΑ's port before `up` takes it
    async with await proxy_in_front_of(ports.employment, ports) as proxy:
        proxy.lose_answers(0.3)
        hub = HubProcess(
            tmp_path / "var",
            ports,
            tmp_path / "logs",
            extra_env={"AGENCIES__DYPA__BASE_URL": f"http://127.0.0.1:{proxy.port}"},
        )
        try:
            await asyncio.to_thread(hub.start)  # blocking; the proxy keeps serving meanwhile
            client = client_for(hub)
            await asyncio.wait_for(client.submit_many("lost", 100, rate_per_s=20), 120)
            report = await drain_and_reconcile(
                "f: 30% of dypa answers lost after the work was done", client, timeout_s=240
            )
            stats = await sandbox_get(client, "dypa", "stats")
            report.extra = (
                f"proxy_answers={proxy.answers} answers_lost={proxy.answers_lost} "
                f"dypa_duplicates={stats['duplicates']}"
            )
            check(report, hub)
        finally:
            await asyncio.to_thread(hub.stop)
    assert proxy.answers_lost > 0, "no answer was lost: the test proves nothing"
    assert stats["duplicates"] > 0, "no lost registration answer was ever retried"
    assert report.duplicates_absorbed >= stats["duplicates"]


# --------------------------------------------------------------------------- g

POISON_METRIC = re.compile(r'^diasyndesi_poison_records_total\{consumer="([^"]+)"\} (\S+)$', re.M)


async def poison_counts(client: Client) -> dict[str, float]:
    """Poison records counted by every process of `up` (serve's projector, the workers'
    connectors), each read from the process's own /metrics."""
    counts: dict[str, float] = {}
    for url in client.hub.metrics_urls():
        async with client.session.get(url) as response:
            response.raise_for_status()
            text = await response.text()
        for consumer, value in POISON_METRIC.findall(text):
            counts[consumer] = counts.get(consumer, 0.0) + float(value)
    return counts


async def read_back(
    bootstrap: str, topic: str, keys: set[bytes], timeout_s: float = 30.0
) -> list[Any]:
    """The records of ``topic`` whose key is in ``keys``, read from the start without a
    consumer group (a group join costs ~5 s on Tansu)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await asyncio.wait_for(consumer.start(), 10)
    found: dict[bytes, Any] = {}
    try:
        await asyncio.wait_for(consumer.topics(), 10)
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await asyncio.wait_for(consumer.seek_to_beginning(), 10)
        deadline = time.monotonic() + timeout_s
        while set(found) != keys and time.monotonic() < deadline:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 10)
            for records in batches.values():
                for record in records:
                    if record.key in keys:
                        found.setdefault(record.key, record)
    finally:
        await asyncio.wait_for(consumer.stop(), 10)
    assert set(found) == keys, f"only {len(found)}/{len(keys)} records found on {topic}"
    return list(found.values())


def schema_invalid(value: bytes) -> bytes:
    """A real referral.submitted body (so it carries an AMKA) that fails the schema."""
    data = json.loads(value)
    data["referral"]["routed"] = 42
    del data["referral"]["id"]
    return json.dumps(data, ensure_ascii=False).encode()


def personal_data(seeds: range) -> set[str]:
    """Identifiers of the synthetic citizens: AMKA, AFM and phone number."""
    found = set()
    for seed in seeds:
        person = sample_referral(seed=seed, programmes=EVERY_FAMILY)["beneficiary"]
        found |= {person["identifier"]["value"], person["afm"], person["phone"]}
    return found


async def test_g_same_event_twice_poison_and_schema_invalid_records(
    tmp_path: Path, client_for: Callable[[HubProcess], Client]
) -> None:
    """While referrals flow: exact copies of 20 real ``kk.referrals.v1`` records, raw poison
    bytes (a referral's JSON without CloudEvents headers) and a CloudEvent whose data fails
    the schema, on every partition; raw poison on ``kk.deliveries.v1`` too. The copies
    must be absorbed by the agencies, the poison counted and skipped, referrals after it
    delivered, and no identifier of a citizen written to a log (at INFO)."""
    hub = HubProcess(
        tmp_path / "var", Ports.free(), tmp_path / "logs", extra_env={"LOG_LEVEL": "INFO"}
    )
    bootstrap = f"127.0.0.1:{hub.ports.broker}"
    try:
        await asyncio.to_thread(hub.start)
        client = client_for(hub)
        before = await poison_counts(client)
        first = await asyncio.wait_for(client.submit_many("twice", 40, rate_per_s=20), 120)
        copied = first[:20]
        originals = await read_back(
            bootstrap, TOPIC_REFERRALS, {s.referral_id.encode() for s in copied}
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", max_request_size=1024 * 1024
        )
        await asyncio.wait_for(producer.start(), 10)
        try:
            partitions = sorted(await producer.partitions_for(TOPIC_REFERRALS))
            delivery_partitions = sorted(await producer.partitions_for(TOPIC_DELIVERIES))
            for record in originals:  # (a) the same event, byte for byte, a second time
                await producer.send_and_wait(
                    TOPIC_REFERRALS,
                    record.value,
                    key=record.key,
                    headers=list(record.headers),
                    partition=record.partition,
                )
            poison_body = json.dumps(sample_referral(seed=999), ensure_ascii=False).encode()
            for partition in partitions:
                # (b) bytes with no CloudEvents headers at all
                await producer.send_and_wait(
                    TOPIC_REFERRALS, poison_body, key=b"poison", partition=partition
                )
                # (c) a well-formed referral.submitted envelope whose data fails the schema
                headers = [
                    ("ce_id", str(uuid.uuid4()).encode()),
                    ("ce_source", SOURCE.encode()),
                    ("ce_specversion", b"1.0"),
                    ("ce_type", REFERRAL_SUBMITTED.encode()),
                    ("content-type", b"application/json"),
                ]
                await producer.send_and_wait(
                    TOPIC_REFERRALS,
                    schema_invalid(originals[0].value),
                    key=originals[0].key,
                    headers=headers,
                    partition=partition,
                )
            for partition in delivery_partitions:
                await producer.send_and_wait(
                    TOPIC_DELIVERIES, b"\xff\x00 not an outcome", key=b"poison", partition=partition
                )
        finally:
            await asyncio.wait_for(producer.stop(), 10)

        after = await asyncio.wait_for(
            client.submit_many("after", 40, rate_per_s=20, seed0=1000), 120
        )
        report = await drain_and_reconcile(
            "g: same event twice + poison + schema-invalid on the topic", client, timeout_s=180
        )
        expected = {c: 2 * len(partitions) for c in CONNECTORS} | {
            "projector": len(delivery_partitions)
        }
        deadline = time.monotonic() + 30
        while True:
            counts = await poison_counts(client)
            grown = {c: counts.get(c, 0) - before.get(c, 0) for c in expected}
            if all(grown[c] >= n for c, n in expected.items()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        # Each copy is a second delivery of the same event: the hub records a second
        # outcome for each copied pair; the REST agencies record a repeat of the key they
        # already hold. (ΟΠΕΚΑ's connector asks for the application by hubReference
        # before submitting, so a repeat never reaches its ledger.)
        copied_pairs = {(s.referral_id, agency) for s in copied for agency in s.routed}
        delivered_twice = sum(
            1 for pair in copied_pairs if report.states.get(pair, {}).get("attempts", 0) >= 2
        )
        copied_ids = {s.referral_id for s in copied}
        absorbed = Counter(
            rec["agency"]
            for rec in await client.sandbox_records()
            if rec["duplicate"] and rec["referral_id"] in copied_ids
        )
        expected_absorbed = Counter(a for s in copied for a in s.routed if a != "opeka")
        after_delivered = sum(
            1
            for s in after
            for agency in s.routed
            if report.states.get((s.referral_id, agency), {}).get("delivery") == "delivered"
        )
        report.extra = (
            f"copies={len(originals)} copied_pairs_delivered_twice={delivered_twice}/"
            f"{len(copied_pairs)} absorbed_by_agency={dict(absorbed)} "
            f"poison_counted={ {c: int(n) for c, n in grown.items()} } "
            f"after_poison_delivered={after_delivered}/{sum(len(s.routed) for s in after)}"
        )
        check(report, hub)
        assert delivered_twice == len(copied_pairs), "some copies were never delivered again"
        assert all(absorbed[a] >= n for a, n in expected_absorbed.items()), (
            f"copies not absorbed by the agencies: {dict(absorbed)} < {dict(expected_absorbed)}"
        )
        assert all(grown[c] >= n for c, n in expected.items()), (
            f"poison not counted: grown {grown}, expected at least {expected}"
        )
        assert after_delivered == sum(len(s.routed) for s in after)
    finally:
        await asyncio.to_thread(hub.stop)

    secrets = personal_data(range(40)) | personal_data(range(1000, 1040))
    secrets |= personal_data(range(999, 1000))
    leaks = []
    for generation in range(1, hub.generation + 1):
        for path in (hub.stderr_log(generation), hub.stdout_log(generation)):
            text = path.read_text(errors="replace")
            leaks += [f"{path.name}: {s}" for s in secrets if s in text]
    assert hub.stderr_log(1).stat().st_size > 0, "nothing logged at INFO: the check proves nothing"
    assert not leaks, f"personal data in the logs of `up`: {leaks[:5]}"
