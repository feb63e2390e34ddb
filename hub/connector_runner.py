"""Runs one agency connector as a Kafka application: one consumer group per agency, reading
``kk.referrals.v1`` and the agency's own retry topics.

For each ``referral.submitted`` record routed to the agency: map (allow-list), try a few
times in process (tenacity, exponential backoff with jitter, Retry-After honoured; a
Retry-After longer than the in-process backoff cap ends the quick attempts), and then
either record success, or re-publish the record to the next retry topic, or to the
dead-letter topic (permanent failure, or retries exhausted). The outcome is published on
``kk.deliveries.v1`` with acks=all and only then is the offset committed. A crash anywhere
before the commit means the record is delivered again with the same idempotency key, which
the agency recognises: at-least-once on the wire, exactly-once in effect.

A retry-topic partition whose head record is not yet due is paused (and the consumer seeks
back to it) until it is; a circuit breaker pauses all of this connector's partitions after
consecutive failures. Neither ever touches another agency's consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from connectors.base import Connector, Delivery, Receipt, idempotency_key
from hub.breaker import BreakerState, CircuitBreaker
from hub.bus import Publisher
from hub.errors import BrokerError, DeliveryError, PermanentError, RetryableError
from hub.events import Event, OutgoingRecord, PoisonRecord, decode, encode
from hub.logs import get_logger
from hub.mapping import Mapping
from hub.metrics import HubMetrics
from hub.retry_topics import H_REDRIVE_FOR, RetryState, dlq_topic, reroute, retry_topic
from hub.settings import RetrySettings
from schemas.events import TOPIC_DELIVERIES, DeliveryOutcome, ReferralSubmitted

log = get_logger(__name__)

# An agency's Retry-After is honoured in full up to this bound (the last default retry-topic
# delay). Why a bound at all: the hint is the agency's word, and a broken or hostile one (an
# HTTP date years ahead, "Retry-After: 99999999") must not park a referral out of sight;
# and a record waiting on a retry partition holds the records behind it on that partition
# (the partition is paused until its head is due), so the bound is also the longest that
# other referrals of the same agency can be held back by one such hint.
RETRY_AFTER_CAP_S = 3600.0


def retry_after_hint(state: RetryCallState) -> float | None:
    """The agency's Retry-After carried by the last failed attempt, if any."""
    exc = state.outcome.exception() if state.outcome else None
    return exc.retry_after_s if isinstance(exc, DeliveryError) else None


class stop_when_hint_over(stop_base):  # lower case, like tenacity's own stops
    """Stop the quick attempts when the agency asks for a longer wait than they allow."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        hint = retry_after_hint(retry_state)
        return hint is not None and hint > self.max_s


@dataclass(frozen=True)
class Incoming:
    """One consumed record: the decoded event plus what is needed to re-route it."""

    event: Event
    headers: list[tuple[str, bytes]]
    key: bytes | None
    value: bytes | None
    origin: str
    retry: RetryState


class DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another member, wait (bounded) for the batch in flight to
    finish and be committed, so the new owner does not redo work already done."""

    def __init__(self, runner: ConnectorRunner, timeout_s: float = 30.0) -> None:
        self.runner = runner
        self.timeout_s = timeout_s

    async def on_partitions_revoked(self, revoked: Any) -> None:
        try:
            await asyncio.wait_for(self.runner.idle.wait(), self.timeout_s)
        except TimeoutError:
            log.warning(
                "rebalance before the batch finished; it will be redelivered",
                agency=self.runner.agency,
            )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", agency=self.runner.agency, count=len(assigned))


class ConnectorRunner:
    """The hub side of one connector: mapping, retries, dead letters, outcomes, offsets."""

    def __init__(
        self,
        connector: Connector,
        mapping: Mapping,
        publisher: Publisher,
        retry: RetrySettings,
        metrics: HubMetrics,
        *,
        concurrency: int = 32,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.connector = connector
        self.agency = connector.agency
        self.mapping = mapping
        self.publisher = publisher
        self.retry = retry
        self.metrics = metrics
        self._limit = asyncio.Semaphore(concurrency)
        self._backoff = wait_exponential_jitter(
            multiplier=retry.initial_s, max=retry.max_s, jitter=retry.jitter_s
        )
        self._sleep = sleep
        self._clock = clock
        self._stopping = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.stall_s = 120.0
        self._last_progress = time.monotonic()
        self._last_watch = 0.0
        self.breaker = CircuitBreaker(
            retry.breaker_threshold, retry.breaker_cooldown_s, on_change=self._breaker_changed
        )
        metrics.circuit_state.labels(self.agency).set(BreakerState.CLOSED)

    @property
    def topics(self) -> list[str]:
        """Retry topics this runner consumes (besides kk.referrals.v1)."""
        return [retry_topic(self.agency, n) for n in range(1, len(self.retry.topic_delays_s) + 1)]

    def _breaker_changed(self, state: BreakerState) -> None:
        self.metrics.circuit_state.labels(self.agency).set(state)
        if state == BreakerState.OPEN:
            self.metrics.circuit_opened.labels(self.agency).inc()
        log.warning("circuit breaker", agency=self.agency, state=state.name.lower())

    # -- one record -------------------------------------------------------------------------

    async def handle(self, incoming: Incoming) -> DeliveryOutcome | None:
        """Deliver one event if it is for this agency; return the recorded outcome."""
        event = incoming.event
        if not isinstance(event.data, ReferralSubmitted):
            return None  # withdrawals and other types are not this runner's job yet
        referral = event.data.referral
        if self.agency not in referral.routed or not self._still_owed(incoming):
            return None
        delivery = Delivery(
            event_id=event.id,
            referral_id=referral.id,
            agency=self.agency,
            idempotency_key=idempotency_key(event.id, self.agency),
            payload=self.mapping.apply(referral.model_dump(mode="json")),
        )
        async with self._limit:
            result, used = await self._attempt(delivery)
        attempts = incoming.retry.attempts + used
        if isinstance(result, Receipt):
            self.breaker.success()
            outcome = self._outcome(delivery, attempts, receipt=result)
        else:
            if isinstance(result, RetryableError):
                self.breaker.failure()
            outcome = await self._reroute(incoming, delivery, attempts, result)
        await self._record(outcome)
        return outcome

    def _still_owed(self, incoming: Incoming) -> bool:
        """False for a re-driven record naming other agencies only (this one has it)."""
        for name, value in incoming.headers:
            if name == H_REDRIVE_FOR:
                return self.agency in value.decode(errors="replace").split(",")
        return True

    async def _reroute(
        self, incoming: Incoming, delivery: Delivery, attempts: int, error: DeliveryError
    ) -> DeliveryOutcome:
        """Send a failed delivery on to the next retry topic or to the dead-letter topic."""
        now = self._clock()
        level = incoming.retry.level + 1
        delays = self.retry.topic_delays_s
        dead = isinstance(error, PermanentError) or level > len(delays)
        if dead:
            topic, due = dlq_topic(self.agency), now
        else:
            delay = max(delays[level - 1], min(error.retry_after_s or 0, RETRY_AFTER_CAP_S))
            topic, due = retry_topic(self.agency, level), now + delay
        record = reroute(
            incoming.headers,
            incoming.key,
            incoming.value,
            topic=topic,
            level=level,
            attempts=attempts,
            first_failure=incoming.retry.first_failure or datetime.now(UTC),
            due=due,
            origin=incoming.retry.origin or incoming.origin,
            error_class=error.error_class,
            error=str(error),
        )
        await self._publish_until_acked(record)
        self.metrics.rerouted.labels(self.agency, "dlq" if dead else f"retry_{level}").inc()
        log.warning(
            "delivery failed; dead-lettered" if dead else "delivery failed; scheduled retry",
            agency=self.agency,
            referral_id=delivery.referral_id,
            error_class=error.error_class,
            attempts=attempts,
            topic=topic,
        )
        return self._outcome(delivery, attempts, error=error, dead_lettered=dead)

    async def _attempt(self, delivery: Delivery) -> tuple[Receipt | DeliveryError, int]:
        """The quick in-process attempts: exponential backoff with jitter, honouring an
        agency's Retry-After when it is longer. A Retry-After beyond ``retry.max_s`` is not
        slept through here (it would hold a concurrency slot and the whole batch's commit):
        the attempts stop and ``_reroute`` schedules the record on a retry topic no earlier
        than the hint. Returns the receipt or the last classified error, and how many calls
        were made."""
        policy = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.retry.attempts) | stop_when_hint_over(self.retry.max_s),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
            before_sleep=self._count_retry,
        )
        used = 0
        try:
            async for attempt in policy:
                with attempt:
                    used = attempt.retry_state.attempt_number
                    receipt = await self.connector.deliver(delivery)
        except DeliveryError as exc:
            return exc, used
        except Exception as exc:  # a connector broke its contract: retry, and say so
            log.error(
                "connector raised a foreign error", agency=self.agency, error=type(exc).__name__
            )
            return RetryableError("connector error", error_class="connector_bug"), used
        return receipt, used

    def _wait(self, state: RetryCallState) -> float:
        # Never shorter than the agency's hint; a hint beyond max_s stops the attempts
        # (``stop_when_hint_over``), so nothing longer than max_s is slept here.
        base = self._backoff(state)
        hint = retry_after_hint(state)
        return max(base, hint) if hint else base

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        error_class = exc.error_class if isinstance(exc, DeliveryError) else "unknown"
        self.metrics.delivery_retries.labels(self.agency, error_class).inc()

    def _outcome(
        self,
        delivery: Delivery,
        attempts: int,
        *,
        receipt: Receipt | None = None,
        error: DeliveryError | None = None,
        dead_lettered: bool = False,
    ) -> DeliveryOutcome:
        return DeliveryOutcome(
            referral_id=delivery.referral_id,
            agency=self.agency,
            succeeded=error is None,
            attempts=max(attempts, 1),
            reference=receipt.reference if receipt else None,
            error_class=error.error_class if error else None,
            error_message=str(error)[:400] if error else None,
            permanent=isinstance(error, PermanentError),
            dead_lettered=dead_lettered,
            occurred_at=datetime.now(UTC),
            submitted_event_id=delivery.event_id,
        )

    async def _record(self, outcome: DeliveryOutcome) -> None:
        record = encode(TOPIC_DELIVERIES, outcome.event_type, outcome, key=outcome.referral_id)
        await self._publish_until_acked(record)

    async def _publish_until_acked(self, record: OutgoingRecord) -> None:
        """Keep trying until the broker takes the record (or we stop, leaving it uncommitted)."""
        pause = 0.2
        while True:
            try:
                await self.publisher.publish(record)
                return
            except BrokerError as exc:
                log.warning("record not published yet", agency=self.agency, error=str(exc))
                if await self._stopped_within(pause):
                    raise
                pause = min(pause * 2, 5.0)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    # -- the Kafka loop ---------------------------------------------------------------------

    async def run(self, consumer: AIOKafkaConsumer, commit_timeout_s: float = 10.0) -> None:
        """Consume until ``stop()``; commit each batch only after every outcome is recorded."""
        await self.connector.start()
        held: dict[TopicPartition, float] = {}  # retry partitions paused until a due time
        try:
            while not self._stopping.is_set():
                self._release(consumer, held)
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except KafkaError as exc:
                    log.warning("fetch failed", agency=self.agency, error=type(exc).__name__)
                    await self._stopped_within(1.0)
                    continue
                if batches:
                    self.idle.clear()
                    try:
                        offsets = await self._process(consumer, batches, held)
                        await self._commit(consumer, offsets, commit_timeout_s)
                    finally:
                        self.idle.set()
                    self._last_progress = time.monotonic()
                elif time.monotonic() - self._last_watch > 5.0:
                    self._last_watch = time.monotonic()
                    await self._watch(consumer, held)
        finally:
            await self.connector.stop()

    async def _watch(self, consumer: AIOKafkaConsumer, held: dict[TopicPartition, float]) -> None:
        """Notice a consumer that makes no progress although records are waiting (lag on a
        partition that is neither held for a due time nor paused by the breaker)."""
        if self.breaker.state == BreakerState.OPEN:
            return
        lag = 0
        for tp in consumer.assignment():
            if tp in held:
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), 1.0)
            except (KafkaError, TimeoutError):
                continue
            lag += max(highwater - position, 0)
        stalled = lag > 0 and time.monotonic() - self._last_progress > self.stall_s
        self.metrics.consumer_lag.labels(self.agency).set(lag)
        self.metrics.consumer_stalled.labels(self.agency).set(1 if stalled else 0)
        if stalled:
            log.error(
                "consumer makes no progress although records wait", agency=self.agency, lag=lag
            )

    def _release(self, consumer: AIOKafkaConsumer, held: dict[TopicPartition, float]) -> None:
        """Resume what is due and what the breaker allows; pause everything while it is open."""
        owned = consumer.assignment()
        if not self.breaker.allows():
            consumer.pause(*owned)
            return
        now = self._clock()
        for tp in list(held):
            if tp not in owned:
                del held[tp]
            elif held[tp] <= now:
                del held[tp]
        consumer.resume(*(tp for tp in owned if tp not in held))

    async def _process(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[Any]],
        held: dict[TopicPartition, float],
    ) -> dict[TopicPartition, int]:
        """Records with the same key in order, others concurrently. A retry partition stops
        at its first record that is not yet due: pause, seek back, commit up to it."""
        by_key: dict[bytes | None, list[Incoming]] = defaultdict(list)
        offsets: dict[TopicPartition, int] = {}
        now = self._clock()
        for tp, records in batches.items():
            for record in records:
                retry = RetryState.from_headers(record.headers)
                if tp.topic != retry_topic(self.agency, retry.level) and retry.level:
                    retry = RetryState()  # headers copied from elsewhere: start afresh
                if retry.due > now:
                    held[tp] = retry.due
                    consumer.seek(tp, record.offset)
                    consumer.pause(tp)
                    break
                offsets[tp] = record.offset + 1
                try:
                    event = decode(record.headers, record.key, record.value)
                except PoisonRecord as exc:
                    self.metrics.poison_records.labels(self.agency).inc()
                    log.error("skipping poison record", agency=self.agency, reason=str(exc))
                    continue
                by_key[record.key].append(
                    Incoming(
                        event,
                        list(record.headers),
                        record.key,
                        record.value,
                        f"{tp.topic}/{tp.partition}/{record.offset}",
                        retry,
                    )
                )

        async def in_order(items: list[Incoming]) -> None:
            for item in items:
                await self.handle(item)

        await asyncio.gather(*(in_order(items) for items in by_key.values()))
        return offsets

    async def _commit(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], timeout_s: float
    ) -> None:
        owned = consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if not mine:
            return
        try:
            await asyncio.wait_for(consumer.commit(mine), timeout_s)
        except (CommitFailedError, KafkaError, TimeoutError) as exc:
            # The records will come back to whoever owns the partition; the agency's
            # idempotency absorbs the repeat.
            log.warning(
                "commit failed; records may be redelivered",
                agency=self.agency,
                error=type(exc).__name__,
            )

    def stop(self) -> None:
        self._stopping.set()
