"""The projector: applies delivery outcomes and enrollment status events to the read model
(per-agency delivery, attempts, status, reference, timeline) and to the metrics.

Each event is applied once: its id is recorded in the same transaction as its effect, so a
redelivered event (after a crash before the offset commit) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from sqlalchemy import exc as sa_exc

from hub.bus import ConsumedRecord, Consumer, KafkaError, TopicPartition, commit_owned
from hub.db import Database
from hub.events import Event, PoisonRecord, decode
from hub.logs import get_logger
from hub.metrics import HubMetrics
from hub.projection import apply_events
from hub.supervisor import where

log = get_logger(__name__)

OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,  # connection lost, server gone, SQLite "database is locked"
    sa_exc.InterfaceError,  # the driver's connection is unusable
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no connection free in the pool
    OSError,  # includes ConnectionError and TimeoutError
)


# PostgreSQL SQLSTATE classes that describe the server or the way to it, never the event:
# 08 connection exception, 40 transaction rollback (serialization, deadlock), 53 insufficient
# resources, 57 operator intervention (57P01 "terminating connection due to administrator
# command" when the server stops), 58 system error; and 25006 (read-only: a failover).
OUTAGE_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
OUTAGE_SQLSTATES = ("25006",)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database (or the way to it) is unavailable, not that the
    event is bad: such an event is retried, never skipped. Everything else raised while
    applying one event (a constraint it violates, a bug) is about that event and skips it.

    asyncpg reports a server shutting down as a plain ``DBAPIError`` with SQLSTATE 57P01,
    not as an ``OperationalError``; found by the PostgreSQL outage scenario."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(sqlstate, str) and (
            sqlstate[:2] in OUTAGE_SQLSTATE_CLASSES or sqlstate in OUTAGE_SQLSTATES
        ):
            return True
    return isinstance(exc, OUTAGE_ERRORS)


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

    async def run(self, consumer: Consumer, commit_timeout_s: float = 10.0) -> None:
        """Apply events in partition order and commit what was applied.

        One bad event never stops the projector: poison is skipped, and any unexpected error
        while applying one event is counted (``diasyndesi_record_errors{consumer="projector"}``),
        logged by class and skipped. An outage of the database is not the event's fault and
        must not lose it: the partition is sought back to that event, nothing after it is
        committed, and the projector tries again after a backoff."""
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                log.warning("projector fetch failed", error=type(exc).__name__)
                await self._pause(1.0)
                continue
            if not batches:
                continue
            outage: Exception | None = None
            try:
                offsets = await self._apply_whole(batches)
            except Exception as exc:
                if is_outage(exc):
                    offsets, outage = {}, exc
                    for partition, records in batches.items():
                        consumer.seek(partition, records[0].offset)  # read them again
                else:  # one event spoils the batch: apply one by one to find and skip it
                    offsets, outage = await self._apply_each(consumer, batches)
            await self._commit(consumer, offsets, commit_timeout_s)
            if outage is not None:
                log.warning(
                    "projector cannot reach the database; will retry the event",
                    error=type(outage).__name__,
                    retry_in_s=backoff,
                )
                await self._pause(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2

    async def _apply_whole(
        self, batches: Mapping[TopicPartition, Sequence[ConsumedRecord]]
    ) -> dict[TopicPartition, int]:
        """The fast path: every event of the fetch in one transaction (poison skipped)."""
        events: list[Event] = []
        offsets: dict[TopicPartition, int] = {}
        poison = 0
        for partition, records in batches.items():
            for record in records:
                try:
                    events.append(decode(record.headers, record.key, record.value))
                except PoisonRecord:
                    poison += 1
                offsets[partition] = record.offset + 1
        if events:
            await self.apply_batch(events)
        if poison:  # counted only once the batch is applied (else _apply_each counts it)
            self.metrics.poison_records.labels("projector").inc(poison)
            log.error("projector skipped poison records", count=poison)
        return offsets

    async def _apply_each(
        self, consumer: Consumer, batches: Mapping[TopicPartition, Sequence[ConsumedRecord]]
    ) -> tuple[dict[TopicPartition, int], Exception | None]:
        """The slow path after a batch failed: one transaction per record, skipping the
        record that cannot be applied; an outage stops at its record, to be read again."""
        offsets: dict[TopicPartition, int] = {}
        pending = list(batches.items())
        for index, (partition, records) in enumerate(pending):
            for record in records:
                try:
                    await self._apply_record(record)
                except Exception as exc:  # only outages come out of _apply_record
                    consumer.seek(partition, record.offset)
                    for other, rest in pending[index + 1 :]:
                        consumer.seek(other, rest[0].offset)
                    return offsets, exc
                offsets[partition] = record.offset + 1
        return offsets, None

    async def _apply_record(self, record: ConsumedRecord) -> None:
        """Decode and apply one record; per-record failures are skipped here, outages
        (``is_outage``) propagate to the caller, which retries the record."""
        try:
            await self.apply(decode(record.headers, record.key, record.value))
        except PoisonRecord as exc:
            self.metrics.poison_records.labels("projector").inc()
            log.error("projector skipped a poison record", reason=str(exc))
        except Exception as exc:
            if is_outage(exc):
                raise
            # a bug, or an event the read model cannot take: count it, say where, skip it
            error_class = f"unexpected:{type(exc).__name__}"[:100]
            self.metrics.record_errors.labels("projector", error_class).inc()
            log.error(
                "projector skipped an event it could not apply",
                error_class=error_class,
                where=where(exc),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )

    async def _commit(
        self, consumer: Consumer, offsets: dict[TopicPartition, int], timeout_s: float
    ) -> None:
        failed = await commit_owned(consumer, offsets, timeout_s)
        if failed:
            log.warning(
                "projector commit failed; events may be re-applied (no effect)", error=failed
            )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
