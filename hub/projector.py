"""The projector: applies delivery outcomes and enrollment status events to the read model
(per-agency delivery, attempts, status, reference, timeline) and to the metrics.

Each event is applied once: its id is recorded in the same transaction as its effect, so a
redelivered event (after a crash before the offset commit) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from hub.db import Database, DeadLetterRow, DeliveryRow, ProcessedEventRow, ReferralRow, TimelineRow
from hub.events import Event, PoisonRecord, decode
from hub.logs import get_logger
from hub.metrics import HubMetrics
from hub.supervisor import where
from schemas.events import DeliveryOutcome, StatusChanged

log = get_logger(__name__)

OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,  # connection lost, server gone, SQLite "database is locked"
    sa_exc.InterfaceError,  # the driver's connection is unusable
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no connection free in the pool
    OSError,  # includes ConnectionError and TimeoutError
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database (or the way to it) is unavailable, not that the
    event is bad: such an event is retried, never skipped. Everything else raised while
    applying one event (a constraint it violates, a bug) is about that event and skips it."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
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
        if not isinstance(event.data, DeliveryOutcome | StatusChanged):
            return False
        data = event.data
        async with self.db.transaction() as session:
            if await session.get(ProcessedEventRow, event.id) is not None:
                return False
            session.add(ProcessedEventRow(event_id=event.id, processed_at=datetime.now(UTC)))
            row = (
                await session.execute(
                    select(DeliveryRow).where(
                        DeliveryRow.referral_id == data.referral_id,
                        DeliveryRow.agency == data.agency,
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                log.warning("event for an unknown delivery", event_id=event.id, agency=data.agency)
                return False
            now = datetime.now(UTC)
            if isinstance(data, DeliveryOutcome):
                observe = self._apply_outcome(row, data)
                if data.dead_lettered:
                    session.add(
                        DeadLetterRow(
                            referral_id=data.referral_id,
                            agency=data.agency,
                            event_id=data.submitted_event_id,
                            error_class=data.error_class or "",
                            reason=data.error_message,
                            permanent=data.permanent,
                            attempts=row.attempts,
                            dead_lettered_at=data.occurred_at,
                        )
                    )
                session.add(
                    TimelineRow(
                        referral_id=data.referral_id,
                        at=data.occurred_at,
                        agency=data.agency,
                        kind="delivered" if data.succeeded else "delivery_failed",
                        detail=data.reference if data.succeeded else data.error_class,
                    )
                )
                if observe:
                    created = await session.scalar(
                        select(ReferralRow.created_at).where(ReferralRow.id == data.referral_id)
                    )
                    if created is not None:
                        self.metrics.submit_to_delivered.labels(data.agency).observe(
                            max((data.occurred_at - created).total_seconds(), 0.0)
                        )
            else:
                latest = await session.scalar(
                    select(func.max(TimelineRow.at)).where(
                        TimelineRow.referral_id == data.referral_id,
                        TimelineRow.agency == data.agency,
                        TimelineRow.kind == "status",
                    )
                )
                if latest is not None and (
                    data.occurred_at < latest
                    or (data.occurred_at == latest and data.status.value == row.status)
                ):
                    # Agencies' pushes arrive late, out of order or twice (a push retried
                    # after a timeout the hub had already answered): never let an older
                    # status overwrite a newer one. Found by the 2-minute outage scenario.
                    log.info("older or repeated status ignored", agency=data.agency)
                    return True
                row.status = data.status.value
                if data.reference:
                    row.reference = data.reference
                session.add(
                    TimelineRow(
                        referral_id=data.referral_id,
                        at=data.occurred_at,
                        agency=data.agency,
                        kind="status",
                        detail=data.status.value,
                    )
                )
                self.metrics.status_updates.labels(data.agency, data.status.value).inc()
            row.updated_at = now
        return True

    def _apply_outcome(self, row: DeliveryRow, data: DeliveryOutcome) -> bool:
        """Update one delivery from an outcome; True when it has just become delivered."""
        row.attempts += data.attempts
        self.metrics.delivery_attempts.labels(data.agency).inc(data.attempts)
        if data.succeeded:
            self.metrics.deliveries.labels(data.agency, "delivered").inc()
            first = row.delivery != "delivered"
            row.delivery = "delivered"
            row.error_class = None
            row.reference = data.reference or row.reference
            if first:
                row.delivered_at = data.occurred_at
            return first
        outcome = "dead_lettered" if data.dead_lettered else "retrying"
        self.metrics.deliveries.labels(data.agency, outcome).inc()
        if row.delivery != "delivered":
            row.delivery = outcome
            row.error_class = data.error_class
        return False

    async def run(self, consumer: AIOKafkaConsumer, commit_timeout_s: float = 10.0) -> None:
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
            offsets: dict[TopicPartition, int] = {}
            outage: Exception | None = None
            for partition, records in batches.items():
                for record in records:
                    if outage is not None:
                        consumer.seek(partition, record.offset)  # not applied: read it again
                        break
                    try:
                        await self._apply_record(record)
                    except Exception as exc:  # only outages come out of _apply_record
                        outage = exc
                        consumer.seek(partition, record.offset)
                        break
                    offsets[partition] = record.offset + 1
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

    async def _apply_record(self, record: Any) -> None:
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
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], timeout_s: float
    ) -> None:
        owned = consumer.assignment()
        mine = {tp: off for tp, off in offsets.items() if tp in owned}
        if not mine:
            return
        try:
            await asyncio.wait_for(consumer.commit(mine), timeout_s)
        except (CommitFailedError, KafkaError, TimeoutError) as exc:
            log.warning(
                "projector commit failed; events may be re-applied (no effect)",
                error=type(exc).__name__,
            )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
