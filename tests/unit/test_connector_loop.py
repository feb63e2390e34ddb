"""The connector runner in its Kafka loop (``ConnectorLoop``) over the in-memory bus, no
broker: what it publishes (outcomes, retry and dead-letter records) lands on the bus and
what lands on its retry topics comes back to it. Commits follow outcomes; a retry partition
waits for its head record's due time while others flow; an open breaker pauses everything;
one key in order, other keys concurrently; a rebalance waits for the batch in flight; a
failed commit or fetch costs a redelivery or a pause, never a record."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import CommitFailedError, KafkaConnectionError

from diasyndesi_sdk.connector import Connector, Delivery, Receipt
from hub.bus import MemoryBus, MemoryConsumer, MemoryPublisher, TopicPartition
from hub.connector_loop import ConnectorLoop, DrainOnRevoke
from hub.connector_runner import ConnectorRunner
from hub.errors import RetryableError
from hub.events import OutgoingRecord, decode, encode
from hub.mapping import load_mapping
from hub.metrics import HubMetrics
from hub.retry_topics import retry_topic
from hub.samples import sample_referral
from hub.settings import AgencyConnection, RetrySettings, packaged_dir
from schemas.events import (
    REFERRAL_SUBMITTED,
    TOPIC_DELIVERIES,
    TOPIC_REFERRALS,
    DeliveryOutcome,
    ReferralSubmitted,
)
from schemas.referral import Referral

REFERRALS = TopicPartition(TOPIC_REFERRALS, 0)
RETRY_1 = TopicPartition(retry_topic("dypa", 1), 0)
START = 1000.0


def referral_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def referral_record(n: int) -> OutgoingRecord:
    """A referral for ΔΥΠΑ, keyed by its id; each call is a new event (a new event id)."""
    referral = Referral(
        **sample_referral(seed=n, programmes=["UNEMPLOYMENT_REGISTRATION"]),
        id=referral_id(n),
        created_at=datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
        municipality="kozani",
        routed=["dypa"],
    )
    return encode(
        TOPIC_REFERRALS,
        REFERRAL_SUBMITTED,
        ReferralSubmitted(referral=referral),
        key=referral.id,
        event_id=str(uuid.uuid4()),
    )


class Agency(Connector):
    """Answers at once, unless scripted: errors to raise for a referral (in order), or a gate
    its calls wait at. Keeps every call (referral id, idempotency key) and what happened."""

    family = "fake"

    def __init__(self) -> None:
        super().__init__("dypa", AgencyConnection())
        self.calls: list[tuple[str, str]] = []
        self.journal: list[str] = []
        self.errors: dict[str, list[Exception]] = {}
        self.gates: dict[str, asyncio.Event] = {}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def deliver(self, delivery: Delivery) -> Receipt:
        who = delivery.referral_id
        self.calls.append((who, delivery.idempotency_key))
        self.journal.append(f"start {who[-1]}")
        if who in self.gates:
            await self.gates[who].wait()
        self.journal.append(f"end {who[-1]}")
        if self.errors.get(who):
            raise self.errors[who].pop(0)
        return Receipt(reference=f"DYPA-{who[-4:]}")

    def called(self, n: int) -> int:
        return sum(1 for who, _ in self.calls if who == referral_id(n))


class Stack:
    """A runner and its loop over one in-memory consumer of its group, on a clock the test
    moves (retry due times); the runner publishes into the same bus it reads."""

    def __init__(self, *, breaker_threshold: int = 50) -> None:
        self.bus = MemoryBus()
        self.now = START
        self.agency = Agency()
        self.metrics = HubMetrics()
        self.centre = MemoryPublisher(self.bus)  # the relay's side
        retry = RetrySettings(
            attempts=1,
            initial_s=0.001,
            max_s=0.01,
            jitter_s=0,
            topic_delays_s=[60.0, 600.0],
            breaker_threshold=breaker_threshold,
            breaker_cooldown_s=30.0,
        )
        self.runner = ConnectorRunner(
            self.agency,
            load_mapping(packaged_dir("mappings") / "dypa.yaml", "dypa"),
            MemoryPublisher(self.bus),
            retry,
            self.metrics,
            clock=lambda: self.now,
        )
        self.consumer = MemoryConsumer(
            self.bus,
            [TOPIC_REFERRALS, *self.runner.topics],
            group_id="diasyndesi.connector.dypa",
            listener=DrainOnRevoke(self.runner, timeout_s=5.0),
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stack:
        await self.consumer.start()
        self.task = asyncio.create_task(ConnectorLoop(self.runner).run(self.consumer))
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.runner.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5.0)

    async def submit(self, *numbers: int) -> None:
        for n in numbers:
            await self.centre.publish(referral_record(n))

    async def until(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.01)

    def committed(self, tp: TopicPartition) -> int | None:
        return self.bus.committed.get(self.consumer.group_id, {}).get(tp)

    def outcomes(self) -> list[DeliveryOutcome]:
        found = []
        for record in self.bus.topic(TOPIC_DELIVERIES):
            data = decode(record.headers, record.key, record.value).data
            assert isinstance(data, DeliveryOutcome)
            found.append(data)
        return found


async def test_a_batch_is_committed_only_after_its_outcomes_are_on_the_bus() -> None:
    stack = Stack()
    seen: list[tuple[dict[TopicPartition, int], int]] = []
    commit = stack.consumer.commit

    async def commit_and_note(offsets: Any = None) -> None:
        seen.append((dict(offsets), len(stack.bus.topic(TOPIC_DELIVERIES))))
        await commit(offsets)

    stack.consumer.commit = commit_and_note  # type: ignore[method-assign]
    await stack.submit(1, 2, 3)
    async with stack:
        await stack.until(lambda: stack.committed(REFERRALS) == 3)
    assert seen == [({REFERRALS: 3}, 3)]
    assert [o.succeeded for o in stack.outcomes()] == [True, True, True]


async def test_a_failure_waits_on_its_retry_topic_until_due_while_others_flow() -> None:
    stack = Stack()
    stack.agency.errors[referral_id(1)] = [RetryableError("503", error_class="http_503")]
    await stack.submit(1)
    async with stack:
        await stack.until(lambda: stack.consumer.paused() == {RETRY_1})
        assert stack.committed(REFERRALS) == 1  # rerouted: the referral partition moves on
        [waiting] = stack.bus.topic(RETRY_1.topic)
        assert float(dict(waiting.headers)["x-dsy-due"]) == START + 60.0

        await stack.submit(2)  # another referral is not held up by the waiting one
        await stack.until(lambda: stack.agency.called(2) == 1)
        await asyncio.sleep(0.3)  # loop turns while the retry is not due
        assert stack.agency.called(1) == 1 and stack.committed(RETRY_1) is None
        assert stack.consumer.paused() == {RETRY_1}

        stack.now = START + 60.0  # due
        await stack.until(lambda: stack.committed(RETRY_1) == 1)
        assert stack.consumer.paused() == set()
    outcomes = [o for o in stack.outcomes() if o.referral_id == referral_id(1)]
    assert [(o.succeeded, o.attempts) for o in outcomes] == [(False, 1), (True, 2)]
    assert len({key for _, key in stack.agency.calls if _ == referral_id(1)}) == 1


async def test_an_open_breaker_pauses_every_partition_until_its_cooldown_ends() -> None:
    stack = Stack(breaker_threshold=1)
    stack.agency.errors[referral_id(1)] = [RetryableError("503", error_class="http_503")]
    await stack.submit(1)
    async with stack:
        await stack.until(lambda: stack.consumer.paused() == stack.consumer.assignment())
        await stack.submit(2)
        await asyncio.sleep(0.3)
        assert stack.agency.called(2) == 0, "no call while the breaker is open"
        stack.runner.breaker.opened_at -= stack.runner.breaker.cooldown_s  # cooldown over
        await stack.until(lambda: stack.agency.called(2) == 1)  # the probe
        await stack.until(lambda: stack.consumer.paused() == {RETRY_1})  # only the retry waits
    assert stack.runner.breaker.allows()


async def test_one_key_goes_in_order_and_other_keys_concurrently() -> None:
    stack = Stack()
    gate = stack.agency.gates[referral_id(1)] = asyncio.Event()
    await stack.centre.publish(referral_record(1))
    await stack.centre.publish(referral_record(1))  # the same referral again: same key
    await stack.submit(2)
    async with stack:
        await stack.until(lambda: "end 2" in stack.agency.journal)
        assert stack.agency.journal == ["start 1", "start 2", "end 2"]
        gate.set()
        await stack.until(lambda: stack.committed(REFERRALS) == 3)
    assert stack.agency.journal[3:] == ["end 1", "start 1", "end 1"]


async def test_a_rebalance_waits_for_the_batch_in_flight_to_be_committed() -> None:
    stack = Stack()
    gate = stack.agency.gates[referral_id(1)] = asyncio.Event()
    await stack.submit(1)
    async with stack:
        await stack.until(lambda: stack.agency.called(1) == 1)
        rebalance = asyncio.create_task(stack.consumer.rebalance(stack.consumer.assignment()))
        await asyncio.sleep(0.1)
        assert not rebalance.done(), "partitions revoked while the batch is in flight"
        gate.set()
        await asyncio.wait_for(rebalance, 2.0)
        assert stack.committed(REFERRALS) == 1
        await asyncio.sleep(0.3)
    assert stack.agency.called(1) == 1, "the new owner does not redo the batch"


async def test_a_failed_commit_means_a_redelivery_with_the_same_idempotency_key() -> None:
    stack = Stack()
    stack.consumer.commit_errors.append(CommitFailedError("rebalanced meanwhile"))
    await stack.submit(1)
    async with stack:
        await stack.until(lambda: stack.agency.called(1) == 1)
        await asyncio.sleep(0.1)
        assert stack.committed(REFERRALS) is None
        await stack.consumer.rebalance(stack.consumer.assignment())  # from the committed offset
        await stack.until(lambda: stack.committed(REFERRALS) == 1)
    [first, again] = stack.agency.calls
    assert first == again  # the agency recognises the repeat


async def test_poison_is_skipped_and_a_failed_fetch_waited_out() -> None:
    stack = Stack()
    poison = OutgoingRecord(topic=TOPIC_REFERRALS, key=b"x", headers=[], value=b"\xff")
    await stack.centre.publish(poison)
    await stack.submit(1)
    stack.consumer.fetch_errors.append(KafkaConnectionError())
    async with stack:
        await stack.until(lambda: stack.committed(REFERRALS) == 2)
    assert stack.agency.called(1) == 1
    assert (
        stack.metrics.registry.get_sample_value(
            "diasyndesi_poison_records_total", {"consumer": "dypa"}
        )
        == 1.0
    )
