"""The outbox relay: publishes committed outbox records to Kafka in commit order and marks
them sent once the broker has acknowledged them (acks=all).

If the broker is down the relay waits and tries again; nothing is dropped. It also watches
the broker: when the hub's topics disappear (the embedded broker restarted and lost
everything) it re-creates them and re-drives every referral that is not yet terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select, update

from hub.bus import (
    HUB_TOPICS,
    MARKER_TOPIC,
    KafkaCluster,
    KafkaPublisher,
    ensure_topics,
    list_topics,
)
from hub.db import Database, OutboxRow, TimelineRow
from hub.errors import BrokerError
from hub.events import OutgoingRecord
from hub.logs import get_logger
from hub.metrics import HubMetrics
from hub.outbox import redrive_stale, redrive_unfinished
from schemas.events import REFERRAL_SUBMITTED

log = get_logger(__name__)


class Relay:
    def __init__(
        self,
        db: Database,
        publisher: KafkaPublisher,
        metrics: HubMetrics,
        *,
        kafka: KafkaCluster,
        topics: Sequence[str] = (*HUB_TOPICS, MARKER_TOPIC),
        poll_s: float = 0.05,
        batch: int = 200,
        topic_check_s: float = 5.0,
        on_data_loss: Callable[[], Awaitable[None]] | None = None,
        stale_after_s: float | None = None,
        stale_check_s: float = 15.0,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.metrics = metrics
        self.kafka = kafka
        self.topics = list(topics)
        self.poll_s = poll_s
        self.batch = batch
        self.topic_check_s = topic_check_s
        self.on_data_loss = on_data_loss
        self.stale_after_s = stale_after_s
        self.stale_check_s = stale_check_s
        self._last_stale_check = time.monotonic()
        self.wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_topic_check = 0.0

    def stop(self) -> None:
        self._stopping.set()
        self.wakeup.set()

    async def run(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                await self._maybe_check_topics()
                await self._maybe_redrive_stale()
                sent = await self.publish_pending()
                backoff = 0.2
            except BrokerError as exc:
                log.warning("relay cannot reach the broker", error=str(exc), retry_in_s=backoff)
                self._last_topic_check = 0.0  # check the marker before the next publish
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent < self.batch:
                await self._sleep(self.poll_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), seconds)
        self.wakeup.clear()

    async def publish_pending(self) -> int:
        """Publish one batch of unsent records; returns how many were sent."""
        async with self.db.sessions() as session:
            rows = (
                (
                    await session.execute(
                        select(OutboxRow)
                        .where(OutboxRow.sent_at.is_(None))
                        .order_by(OutboxRow.id)
                        .limit(self.batch)
                    )
                )
                .scalars()
                .all()
            )
            backlog = await session.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.sent_at.is_(None))
            )
        self.metrics.outbox_backlog.set(backlog or 0)
        if not rows:
            return 0
        records = [
            OutgoingRecord(
                topic=row.topic,
                key=row.key,
                headers=[(name, value.encode()) for name, value in row.headers],
                value=row.value,
            )
            for row in rows
        ]
        await self.publisher.publish_many(records)
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_([row.id for row in rows]))
                .values(sent_at=now, publish_count=OutboxRow.publish_count + 1)
            )
            session.add_all(
                TimelineRow(
                    referral_id=row.referral_id,
                    at=now,
                    kind="published",
                    detail="referral event on the bus",
                )
                for row in rows
                if row.event_type == REFERRAL_SUBMITTED
            )
        for row in rows:
            self.metrics.relay_published.labels(row.topic).inc()
        self.metrics.outbox_backlog.set(max((backlog or 0) - len(rows), 0))
        return len(rows)

    async def _maybe_redrive_stale(self) -> None:
        if self.stale_after_s is None:
            return
        if time.monotonic() - self._last_stale_check < self.stale_check_s:
            return
        self._last_stale_check = time.monotonic()
        requeued = await redrive_stale(self.db, self.stale_after_s)
        if requeued:
            self.metrics.redriven_stale.inc(requeued)
            log.warning("re-driving referrals with no outcome", records=requeued)

    async def _maybe_check_topics(self) -> None:
        if time.monotonic() - self._last_topic_check < self.topic_check_s:
            return
        self._last_topic_check = time.monotonic()
        # Producers auto-create topics they write to, so the hub's own topics reappearing
        # proves nothing; the marker topic is never written, so only the hub re-creates it.
        if MARKER_TOPIC in await list_topics(self.kafka):
            return
        log.warning("broker lost its data (marker topic gone); re-creating and re-driving")
        await ensure_topics(self.kafka, self.topics)
        requeued = await redrive_unfinished(self.db)
        log.info("re-drive queued", records=requeued)
        if self.on_data_loss is not None:
            await self.on_data_loss()
