"""The Kafka side of a connector runner: one consumer of the agency's group, reading
``kk.referrals.v1`` and the agency's retry topics.

Fetch a batch; hand its records to the runner (``ConnectorRunner.handle_safely``), records
with the same key in order and others concurrently; commit the batch only after every
outcome is recorded. A retry-topic partition whose head record is not yet due (by the retry
policy, ``hub/retry_policy.py``) is paused (and the consumer seeks back to it) until it is;
while the circuit breaker is open every partition is paused. A consumer that has lag but
makes no progress is reported. Before partitions move to another member, the batch in
flight is finished and committed (``DrainOnRevoke``). The runner never raises for one record
(it dead-letters it), so a batch always commits and a partition never sticks on a bad
record. The loop talks to the ``Consumer`` protocol of ``hub/bus.py``: aiokafka's consumer in
production, ``MemoryConsumer`` in unit tests.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from hub.breaker import BreakerState
from hub.bus import (
    ConsumedRecord,
    Consumer,
    ConsumerRebalanceListener,
    KafkaError,
    TopicPartition,
    commit_owned,
)
from hub.connector_runner import ConnectorRunner, Incoming
from hub.events import PoisonRecord, decode
from hub.logs import get_logger
from hub.retry_policy import held_until, retry_state

log = get_logger(__name__)


class ConnectorLoop:
    """Runs one ``ConnectorRunner`` over one consumer until the runner is stopped."""

    def __init__(self, runner: ConnectorRunner, *, commit_timeout_s: float = 10.0) -> None:
        self.runner = runner
        self.commit_timeout_s = commit_timeout_s
        self.stall_s = 120.0
        self._last_progress = time.monotonic()
        self._last_watch = 0.0

    async def run(self, consumer: Consumer) -> None:
        """Consume until ``stop()``; commit each batch only after every outcome is recorded."""
        await self.runner.connector.start()
        held: dict[TopicPartition, float] = {}  # retry partitions paused until a due time
        try:
            while not self.runner.stopping:
                self._release(consumer, held)
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except KafkaError as exc:
                    log.warning("fetch failed", agency=self.runner.agency, error=type(exc).__name__)
                    await self.runner.stopped_within(1.0)
                    continue
                if batches:
                    self.runner.idle.clear()
                    try:
                        offsets = await self._process(consumer, batches, held)
                        await self._commit(consumer, offsets, self.commit_timeout_s)
                    finally:
                        self.runner.idle.set()
                    self._last_progress = time.monotonic()
                elif time.monotonic() - self._last_watch > 5.0:
                    self._last_watch = time.monotonic()
                    await self._watch(consumer, held)
        finally:
            await self.runner.connector.stop()

    async def _watch(self, consumer: Consumer, held: dict[TopicPartition, float]) -> None:
        """Notice a consumer that makes no progress although records are waiting (lag on a
        partition that is neither held for a due time nor paused by the breaker)."""
        if self.runner.breaker.state == BreakerState.OPEN:
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
        self.runner.metrics.consumer_lag.labels(self.runner.agency).set(lag)
        self.runner.metrics.consumer_stalled.labels(self.runner.agency).set(1 if stalled else 0)
        if stalled:
            log.error(
                "consumer makes no progress although records wait",
                agency=self.runner.agency,
                lag=lag,
            )

    def _release(self, consumer: Consumer, held: dict[TopicPartition, float]) -> None:
        """Resume what is due and what the breaker allows; pause everything while it is open."""
        owned = consumer.assignment()
        if not self.runner.breaker.allows():
            consumer.pause(*owned)
            return
        now = self.runner.now()
        for tp in list(held):
            if tp not in owned:
                del held[tp]
            elif held[tp] <= now:
                del held[tp]
        consumer.resume(*(tp for tp in owned if tp not in held))

    async def _process(
        self,
        consumer: Consumer,
        batches: Mapping[TopicPartition, Sequence[ConsumedRecord]],
        held: dict[TopicPartition, float],
    ) -> dict[TopicPartition, int]:
        """Records with the same key in order, others concurrently. A retry partition stops
        at its first record that is not yet due: pause, seek back, commit up to it."""
        by_key: dict[bytes | None, list[Incoming]] = defaultdict(list)
        offsets: dict[TopicPartition, int] = {}
        now = self.runner.now()
        for tp, records in batches.items():
            for record in records:
                retry = retry_state(self.runner.agency, tp.topic, record.headers)
                due = held_until(retry, now)
                if due is not None:
                    held[tp] = due
                    consumer.seek(tp, record.offset)
                    consumer.pause(tp)
                    break
                offsets[tp] = record.offset + 1
                try:
                    event = decode(record.headers, record.key, record.value)
                except PoisonRecord as exc:
                    self.runner.metrics.poison_records.labels(self.runner.agency).inc()
                    log.error("skipping poison record", agency=self.runner.agency, reason=str(exc))
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
                await self.runner.handle_safely(item)

        await asyncio.gather(*(in_order(items) for items in by_key.values()))
        return offsets

    async def _commit(
        self, consumer: Consumer, offsets: dict[TopicPartition, int], timeout_s: float
    ) -> None:
        failed = await commit_owned(consumer, offsets, timeout_s)
        if failed:  # the agency's idempotency absorbs the repeat
            log.warning(
                "commit failed; records may be redelivered",
                agency=self.runner.agency,
                error=failed,
            )


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
