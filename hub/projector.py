"""The projector: applies delivery outcomes and enrollment status events to the read model
(per-agency delivery, attempts, status, reference, timeline) and to the metrics.

Each event is applied once: its id is recorded in the same transaction as its effect, so a
redelivered event (after a crash before the offset commit) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError
from sqlalchemy import func, select

from hub.db import Database, DeadLetterRow, DeliveryRow, ProcessedEventRow, ReferralRow, TimelineRow
from hub.events import Event, PoisonRecord, decode
from hub.logs import get_logger
from hub.metrics import HubMetrics
from schemas.events import DeliveryOutcome, StatusChanged

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
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                log.warning("projector fetch failed", error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                continue
            offsets = {}
            for partition, records in batches.items():
                for record in records:
                    try:
                        await self.apply(decode(record.headers, record.key, record.value))
                    except PoisonRecord as exc:
                        self.metrics.poison_records.labels("projector").inc()
                        log.error("projector skipped a poison record", reason=str(exc))
                    offsets[partition] = record.offset + 1
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
