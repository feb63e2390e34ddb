"""The projector: applies delivery outcomes and enrollment status events to the read model
(per-agency delivery, attempts, status, reference, timeline) and to the metrics.

Each event is applied once: its id is recorded in the same transaction as its effect, so a
redelivered event (after a crash before the offset commit) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from hub.db import Database
from hub.events import Event, PoisonRecord, decode
from hub.logs import get_logger
from hub.metrics import HubMetrics
from hub.projection import apply_events

log = get_logger(__name__)


class Projector:
    def __init__(self, db: Database, metrics: HubMetrics) -> None:
        self.db = db
        self.metrics = metrics
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def apply(self, event: Event) -> bool:
        """Apply one event; False if it was already applied or is not for the read model."""
        return await self.apply_batch([event]) > 0

    async def apply_batch(self, events: Sequence[Event]) -> int:
        """Apply events in order, in one transaction (``hub/projection.py``)."""
        async with self.db.transaction() as session:
            return await apply_events(session, events, self.metrics)

    async def run(self, consumer: AIOKafkaConsumer, commit_timeout_s: float = 10.0) -> None:
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                log.warning("projector fetch failed", error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                continue
            offsets = {}
            events = []
            for partition, records in batches.items():
                for record in records:
                    try:
                        events.append(decode(record.headers, record.key, record.value))
                    except PoisonRecord as exc:
                        self.metrics.poison_records.labels("projector").inc()
                        log.error("projector skipped a poison record", reason=str(exc))
                    offsets[partition] = record.offset + 1
            if events:
                await self.apply_batch(events)
            owned = consumer.assignment()
            mine = {tp: off for tp, off in offsets.items() if tp in owned}
            if mine:
                try:
                    await asyncio.wait_for(consumer.commit(mine), commit_timeout_s)
                except (CommitFailedError, KafkaError, TimeoutError) as exc:
                    log.warning(
                        "projector commit failed; events may be re-applied (no effect)",
                        error=type(exc).__name__,
                    )
