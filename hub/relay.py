"""The outbox relay: publishes committed outbox records to Kafka in commit order and marks
them sent once the broker has acknowledged them (acks=all).

If the broker is down the relay waits and tries again; nothing is dropped. Before it
publishes it runs the check for a broker that lost its data (``BrokerDataLoss`` in
``hub/consumers.py``, which owns that recovery), so a loss is seen before the backlog lands
on the new broker.

Any number of relays (one per ``serve``) share one database: each claims the rows it
publishes, and the jobs that must happen once (the stale-delivery sweep here, recovery after
a broker data loss) are taken under a lease (``hub/leases.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from hub.bus import KafkaPublisher
from hub.consumers import BrokerDataLoss
from hub.db import OUTBOX_CHANNEL, Database, OutboxRow, TimelineRow
from hub.errors import BrokerError
from hub.events import OutgoingRecord
from hub.leases import Leases
from hub.logs import get_logger
from hub.metrics import HubMetrics
from hub.outbox import redrive_stale
from schemas.events import REFERRAL_SUBMITTED

log = get_logger(__name__)

STALE_SWEEP_LEASE = "stale-sweep"


class Relay:
    def __init__(
        self,
        db: Database,
        publisher: KafkaPublisher,
        metrics: HubMetrics,
        *,
        data_loss: BrokerDataLoss | None = None,
        poll_s: float = 0.05,
        batch: int = 200,
        stale_after_s: float | None = None,
        stale_check_s: float = 15.0,
        claim_s: float = 30.0,
        leases: Leases | None = None,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.metrics = metrics
        self.data_loss = data_loss
        self.poll_s = poll_s
        self.batch = batch
        self.stale_after_s = stale_after_s
        self.stale_check_s = stale_check_s
        self._last_stale_check = time.monotonic()
        self.claim_s = claim_s
        self.leases = leases or Leases(db)
        self.holder = self.leases.holder
        self._backlog = 0
        self._last_backlog_count = 0.0
        self.wakeup = asyncio.Event()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.wakeup.set()

    async def run(self) -> None:
        listener = (
            asyncio.create_task(self._listen(), name="relay-listen") if self.db.postgres else None
        )
        # With NOTIFY waking it, a PostgreSQL relay polls only as a safety net.
        poll_s = max(self.poll_s, 1.0) if listener is not None else self.poll_s
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                try:
                    if self.data_loss is not None:
                        await self.data_loss.check()
                    await self._maybe_redrive_stale()
                    sent = await self.publish_pending()
                    backoff = 0.2
                except BrokerError as exc:
                    log.warning("relay cannot reach the broker", error=str(exc), retry_in_s=backoff)
                    if self.data_loss is not None:
                        self.data_loss.check_soon()
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except (SQLAlchemyError, OSError) as exc:
                    log.warning(
                        "relay cannot reach the database",
                        error=type(exc).__name__,
                        retry_in_s=backoff,
                    )
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if sent < self.batch:
                    await self._sleep(poll_s)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await listener

    async def _listen(self) -> None:
        """PostgreSQL: LISTEN on the outbox channel, so a row committed by any ``serve``
        wakes this relay at once; reconnects after the database comes back."""
        while not self._stopping.is_set():
            try:
                async with self.db.engine.connect() as connection:
                    raw = await connection.get_raw_connection()
                    driver: Any = raw.driver_connection
                    await driver.add_listener(OUTBOX_CHANNEL, lambda *_: self.wakeup.set())
                    self.wakeup.set()  # anything committed while not listening
                    while not driver.is_closed() and not self._stopping.is_set():
                        await asyncio.sleep(2.0)
                        await driver.execute("SELECT 1")  # notices a dead server
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("relay lost its LISTEN connection", error=type(exc).__name__)
            await asyncio.sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), seconds)
        self.wakeup.clear()

    async def publish_pending(self) -> int:
        """Claim, publish and mark one batch of unsent records; returns how many were sent.

        The claim is one UPDATE … RETURNING over the oldest unclaimed rows (on PostgreSQL
        their selection is ``FOR UPDATE SKIP LOCKED``, so concurrent relays take disjoint
        rows without waiting; SQLite's single writer serialises the statement). A claim
        lapses after ``claim_s``, so rows claimed by a relay that died are taken over."""
        await self._maybe_count_backlog()
        rows = await self._claim()
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
        ids = [row.id for row in rows]
        try:
            await self.publisher.publish_many(records)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._unclaim(ids)
            raise
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(ids), OutboxRow.claimed_by == self.holder)
                .values(
                    sent_at=now,
                    publish_count=OutboxRow.publish_count + 1,
                    claimed_by=None,
                    claimed_until=None,
                )
                .execution_options(synchronize_session=False)
            )
            timeline = [
                {
                    "referral_id": row.referral_id,
                    "at": now,
                    "kind": "published",
                    "detail": "referral event on the bus",
                }
                for row in rows
                if row.event_type == REFERRAL_SUBMITTED
            ]
            if timeline:
                await session.execute(insert(TimelineRow), timeline)
        for row in rows:
            self.metrics.relay_published.labels(row.topic).inc()
        self._backlog = max(self._backlog - len(rows), 0)
        self.metrics.outbox_backlog.set(self._backlog)
        return len(rows)

    async def _claim(self) -> list[Any]:
        now = datetime.now(UTC)
        oldest = (
            select(OutboxRow.id)
            .where(
                OutboxRow.sent_at.is_(None),
                or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now),
            )
            .order_by(OutboxRow.id)
            .limit(self.batch)
            .with_for_update(skip_locked=True)
        )
        async with self.db.transaction() as session:
            claimed = await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(oldest.scalar_subquery()))
                .values(claimed_by=self.holder, claimed_until=now + timedelta(seconds=self.claim_s))
                .returning(
                    OutboxRow.id,
                    OutboxRow.topic,
                    OutboxRow.key,
                    OutboxRow.headers,
                    OutboxRow.value,
                    OutboxRow.event_type,
                    OutboxRow.referral_id,
                )
                .execution_options(synchronize_session=False)
            )
            rows = list(claimed.all())
        rows.sort(key=lambda row: row.id)  # RETURNING order is not guaranteed
        return rows

    async def _unclaim(self, ids: list[int]) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(ids), OutboxRow.claimed_by == self.holder)
                .values(claimed_by=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )

    async def _maybe_count_backlog(self) -> None:
        """The backlog gauge, counted at most once a second (a count is a scan)."""
        if time.monotonic() - self._last_backlog_count < 1.0:
            return
        self._last_backlog_count = time.monotonic()
        async with self.db.sessions() as session:
            backlog = await session.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.sent_at.is_(None))
            )
        self._backlog = int(backlog or 0)
        self.metrics.outbox_backlog.set(self._backlog)

    async def _maybe_redrive_stale(self) -> None:
        if self.stale_after_s is None:
            return
        if time.monotonic() - self._last_stale_check < self.stale_check_s:
            return
        self._last_stale_check = time.monotonic()
        if not await self.leases.acquire(STALE_SWEEP_LEASE, ttl_s=self.stale_check_s * 2):
            return  # another relay sweeps
        requeued = await redrive_stale(self.db, self.stale_after_s)
        if requeued:
            self.metrics.redriven_stale.inc(requeued)
            log.warning("re-driving referrals with no outcome", records=requeued)
