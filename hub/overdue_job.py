"""Telling a centre that an information request became overdue, once per request.

A periodic job of ``serve`` (one process at a time, by the ``information-overdue`` lease):
a request still unanswered when its Athens due day ended (``overdue_at``) and not yet told
gets ``overdue_told_at`` set and an ``information_request.overdue`` centre event, in one
transaction. The UPDATE only takes rows still untold, so even two jobs at once (a lease
that lapsed mid-run) tell each request once.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from sqlalchemy import select, update

from hub.centre_events import INFORMATION_REQUEST_OVERDUE, CentreEvent, record_centre_events
from hub.db import Database, InformationRequestRow
from hub.leases import Leases
from hub.logs import get_logger
from hub.metrics import HubMetrics

log = get_logger(__name__)

LEASE = "information-overdue"
BATCH = 500


class OverdueJob:
    def __init__(
        self, db: Database, metrics: HubMetrics, leases: Leases, interval_s: float = 60.0
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.leases = leases
        self.interval_s = interval_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            if await self.leases.acquire(LEASE, ttl_s=max(30.0, self.interval_s * 3)):
                while await self.tell_once() == BATCH:
                    pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    async def tell_once(self, now: datetime | None = None) -> int:
        """Tell up to ``BATCH`` newly overdue requests; returns how many."""
        now = now or datetime.now(UTC)
        async with self.db.transaction() as session:
            due = (
                select(InformationRequestRow.id)
                .where(
                    InformationRequestRow.answered_at.is_(None),
                    InformationRequestRow.overdue_told_at.is_(None),
                    InformationRequestRow.overdue_at <= now,
                )
                .order_by(InformationRequestRow.overdue_at)
                .limit(BATCH)
            )
            if self.db.postgres:
                due = due.with_for_update(skip_locked=True)
            told = list(
                (
                    await session.execute(
                        update(InformationRequestRow)
                        .where(
                            InformationRequestRow.id.in_(due.scalar_subquery()),
                            InformationRequestRow.overdue_told_at.is_(None),
                        )
                        .values(overdue_told_at=now)
                        .returning(
                            InformationRequestRow.id,
                            InformationRequestRow.referral_id,
                            InformationRequestRow.centre,
                            InformationRequestRow.due,
                            InformationRequestRow.requested_at,
                        )
                        .execution_options(synchronize_session=False)
                    )
                ).all()
            )
            told.sort(key=lambda row: (row.requested_at, row.id))
            await record_centre_events(
                session,
                [
                    CentreEvent(
                        row.centre,
                        INFORMATION_REQUEST_OVERDUE,
                        row.referral_id,
                        {"request_id": row.id, "due": row.due.isoformat()},
                    )
                    for row in told
                ],
            )
        if told:
            self.metrics.centre_events_overdue.inc(len(told))
            log.info("overdue information requests told", count=len(told))
        return len(told)
