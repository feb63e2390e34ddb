"""Runs one agency connector as a Kafka application: one consumer group per agency.

For each ``referral.submitted`` record routed to the agency: map (allow-list), deliver with
the hub's one retry policy (tenacity, exponential backoff with jitter), publish the outcome
on ``kk.deliveries.v1`` with acks=all, and only then commit the offset. A crash anywhere
before the commit means the record is delivered again with the same idempotency key, which
the agency recognises: at-least-once on the wire, exactly-once in effect.

When the quick attempts are exhausted the runner publishes a ``failed`` outcome (so the
centre sees ``retrying``) and keeps trying with a longer pause without committing; this
holds back only this agency's partition, never another agency's consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from connectors.base import Connector, Delivery, Receipt, idempotency_key
from hub.bus import Publisher
from hub.errors import BrokerError, DeliveryError, PermanentError, RetryableError
from hub.events import Event, PoisonRecord, decode, encode
from hub.logs import get_logger
from hub.mapping import Mapping
from hub.metrics import HubMetrics
from hub.settings import RetrySettings
from schemas.events import TOPIC_DELIVERIES, DeliveryOutcome, ReferralSubmitted

log = get_logger(__name__)

LONG_PAUSE_MAX_S = 60.0


class ConnectorRunner:
    """The hub side of one connector: mapping, retries, outcomes, offsets."""

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
        self._stopping = asyncio.Event()

    # -- one event --------------------------------------------------------------------------

    async def handle(self, event: Event) -> DeliveryOutcome | None:
        """Deliver one decoded event if it is for this agency; return the recorded outcome."""
        if not isinstance(event.data, ReferralSubmitted):
            return None  # withdrawals and other types are not this runner's job yet
        referral = event.data.referral
        if self.agency not in referral.routed:
            return None
        delivery = Delivery(
            event_id=event.id,
            referral_id=referral.id,
            agency=self.agency,
            idempotency_key=idempotency_key(event.id, self.agency),
            payload=self.mapping.apply(referral.model_dump(mode="json")),
        )
        attempts = 0
        pause = self.retry.max_s
        while True:
            async with self._limit:
                result, used = await self._attempt(delivery)
            attempts += used
            if isinstance(result, RetryableError):
                await self._record(self._outcome(delivery, attempts, error=result))
                log.warning(
                    "delivery still failing, pausing",
                    agency=self.agency,
                    referral_id=delivery.referral_id,
                    error_class=result.error_class,
                    pause_s=round(pause, 1),
                )
                if await self._stopped_within(pause + random.uniform(0, self.retry.jitter_s)):
                    raise result
                pause = min(pause * 2, LONG_PAUSE_MAX_S)
                continue
            if isinstance(result, Receipt):
                outcome = self._outcome(delivery, attempts, receipt=result)
            else:
                outcome = self._outcome(delivery, attempts, error=result)
            await self._record(outcome)
            return outcome

    async def _attempt(self, delivery: Delivery) -> tuple[Receipt | DeliveryError, int]:
        """The one declared retry policy: quick attempts with exponential backoff + jitter,
        honouring an agency's Retry-After when it is longer. Returns the receipt or the
        last classified error, and how many calls were made."""
        policy = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.retry.attempts),
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
        base = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        hint = exc.retry_after_s if isinstance(exc, DeliveryError) else None
        return max(base, min(hint, LONG_PAUSE_MAX_S)) if hint else base

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
            occurred_at=datetime.now(UTC),
            submitted_event_id=delivery.event_id,
        )

    async def _record(self, outcome: DeliveryOutcome) -> None:
        """Publish the outcome; keep trying until the broker takes it (or we stop)."""
        record = encode(TOPIC_DELIVERIES, outcome.event_type, outcome, key=outcome.referral_id)
        pause = 0.2
        while True:
            try:
                await self.publisher.publish(record)
                return
            except BrokerError as exc:
                log.warning("outcome not published yet", agency=self.agency, error=str(exc))
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
        try:
            while not self._stopping.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except KafkaError as exc:
                    log.warning("fetch failed", agency=self.agency, error=type(exc).__name__)
                    await self._stopped_within(1.0)
                    continue
                if not batches:
                    continue
                offsets = await self._process(batches)
                await self._commit(consumer, offsets, commit_timeout_s)
        finally:
            await self.connector.stop()

    async def _process(
        self, batches: dict[TopicPartition, list[object]]
    ) -> dict[TopicPartition, int]:
        """Process a fetched batch: records with the same key in order, others concurrently."""
        by_key: dict[bytes | None, list[Event]] = defaultdict(list)
        offsets: dict[TopicPartition, int] = {}
        for partition, records in batches.items():
            for record in records:
                offsets[partition] = record.offset + 1  # type: ignore[attr-defined]
                try:
                    event = decode(record.headers, record.key, record.value)  # type: ignore[attr-defined]
                except PoisonRecord as exc:
                    self.metrics.poison_records.labels(self.agency).inc()
                    log.error("skipping poison record", agency=self.agency, reason=str(exc))
                    continue
                by_key[record.key].append(event)  # type: ignore[attr-defined]

        async def in_order(events: list[Event]) -> None:
            for event in events:
                await self.handle(event)

        await asyncio.gather(*(in_order(events) for events in by_key.values()))
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
