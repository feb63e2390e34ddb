"""Status polling for agencies that cannot push (the benefits agency's SOAP service).

On an interval, for each delivered (or withdrawn) referral of the agency whose status is not
final, ask the agency (``PollsStatus.status_of`` with the agency's own reference) and publish a
``status_changed`` event when the answer differs from the read model. Events go straight to
``kk.status.v1``; the projector applies them like pushed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError

from diasyndesi_sdk.connector import Connector, PollsStatus
from hub.bus import Publisher
from hub.db import Database, DeliveryRow
from hub.errors import BrokerError, DeliveryError
from hub.events import encode
from hub.leases import Leases
from hub.logs import get_logger
from hub.metrics import HubMetrics
from schemas.codes import EnrollmentStatus
from schemas.events import STATUS_CHANGED, TOPIC_STATUS, StatusChanged

log = get_logger(__name__)

FINAL_STATUSES = frozenset(
    {
        EnrollmentStatus.ACCEPTED,
        EnrollmentStatus.ENROLLED,
        EnrollmentStatus.REJECTED,
        EnrollmentStatus.COMPLETED,
        EnrollmentStatus.WITHDRAWN,
    }
)
"""Once the agency has decided, polling stops (a later change would need a slower re-check)."""


class StatusPoller:
    def __init__(
        self,
        db: Database,
        connector: Connector,
        publisher: Publisher,
        metrics: HubMetrics,
        *,
        interval_s: float,
        batch: int = 500,
        concurrency: int = 8,
        leases: Leases | None = None,
    ) -> None:
        if not isinstance(connector, PollsStatus):
            raise TypeError(f"{type(connector).__name__} cannot be polled")
        self.db = db
        self.connector = connector
        self.agency = connector.agency
        self.publisher = publisher
        self.metrics = metrics
        self.interval_s = interval_s
        self.batch = batch
        self.concurrency = concurrency
        self.leases = leases
        self._stopping = asyncio.Event()
        # referral -> (status sent, when): not sent again until the read model shows it, or
        # until ``republish_s`` passes (the broker may have lost it).
        self._published: dict[str, tuple[str, float]] = {}
        self.republish_s = 60.0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Poll every ``interval_s``. With several workers of the agency, only the one that
        holds the agency's polling lease asks (the agency is asked once, not once per
        worker); another takes over within a few intervals if it dies."""
        lease = f"poll:{self.agency}"
        while not self._stopping.is_set():
            try:
                if self.leases is None or await self.leases.acquire(
                    lease, ttl_s=max(3 * self.interval_s, 10.0)
                ):
                    await self.poll_once()
            except BrokerError as exc:
                log.warning("status poll could not publish", agency=self.agency, error=str(exc))
            except (SQLAlchemyError, OSError) as exc:
                log.warning("status poll cannot read the database", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    async def poll_once(self) -> int:
        """One pass over the open deliveries; returns how many changes were published."""
        async with self.db.sessions() as session:
            rows = (
                await session.execute(
                    select(DeliveryRow.referral_id, DeliveryRow.reference, DeliveryRow.status)
                    .where(
                        DeliveryRow.agency == self.agency,
                        # a withdrawn one too: the agency's answer then is `withdrawn`
                        DeliveryRow.delivery.in_(["delivered", "withdrawn"]),
                        DeliveryRow.reference.is_not(None),
                        or_(
                            DeliveryRow.status.is_(None),
                            DeliveryRow.status.not_in([s.value for s in FINAL_STATUSES]),
                        ),
                    )
                    .order_by(DeliveryRow.updated_at)
                    .limit(self.batch)
                )
            ).all()
        # A few questions in flight at once: after a burst, one call after another took a
        # minute to catch up with a thousand open deliveries.
        limit = asyncio.Semaphore(self.concurrency)

        async def one(referral_id: str, reference: str, current: str | None) -> bool:
            async with limit:
                if self._stopping.is_set():
                    return False
                return await self._ask(referral_id, reference, current)

        results = await asyncio.gather(
            *(one(r, ref, cur) for r, ref, cur in rows if ref is not None)
        )
        return sum(results)

    async def _ask(self, referral_id: str, reference: str, current: str | None) -> bool:
        """Ask about one delivery; publish its status if it changed. True if published."""
        assert isinstance(self.connector, PollsStatus)
        try:
            report = await self.connector.status_of(reference)
        except DeliveryError as exc:
            self.metrics.status_polls.labels(self.agency, exc.error_class).inc()
            return False
        self.metrics.status_polls.labels(self.agency, "ok").inc()
        if report is None or report.status.value == current:
            self._published.pop(referral_id, None)
            return False
        sent = self._published.get(referral_id)
        if (
            sent
            and sent[0] == report.status.value
            and time.monotonic() - sent[1] < self.republish_s
        ):
            return False  # already on the bus; the projector has not applied it yet
        event = StatusChanged(
            referral_id=referral_id,
            agency=self.agency,
            status=report.status,
            reference=report.reference,
            occurred_at=datetime.now(UTC),
        )
        await self.publisher.publish(encode(TOPIC_STATUS, STATUS_CHANGED, event, key=referral_id))
        self._published[referral_id] = (report.status.value, time.monotonic())
        return True
