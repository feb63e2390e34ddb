"""Status polling for agencies that cannot push: asks only about open deliveries, publishes
a change once, and stops asking once the agency has decided."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from diasyndesi_sdk.connector import Connector, Delivery, PollsStatus, Receipt, StatusReport
from hub.bus import MemoryPublisher
from hub.db import Database, DeliveryRow, ReferralRow
from hub.events import decode
from hub.metrics import HubMetrics
from hub.poller import StatusPoller
from hub.schema import upgrade
from hub.settings import AgencyConnection
from schemas.codes import EnrollmentStatus
from schemas.events import StatusChanged
from tests.databases import fresh_database_url

REFERRAL = "00000000-0000-4000-8000-0000000000bb"


class Agency(Connector, PollsStatus):
    family = "benefits_agency"

    def __init__(self) -> None:
        super().__init__("opeka", AgencyConnection())
        self.answers: dict[str, EnrollmentStatus] = {}
        self.asked: list[str] = []

    async def start(self) -> None:
        pass

    async def deliver(self, delivery: Delivery) -> Receipt:
        raise AssertionError("not used")

    async def stop(self) -> None:
        pass

    async def status_of(self, reference: str) -> StatusReport | None:
        self.asked.append(reference)
        status = self.answers.get(reference)
        return StatusReport(status, reference) if status else None


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(fresh_database_url(tmp_path))
    await upgrade(database)
    now = datetime.now(UTC)
    async with database.transaction() as session:
        session.add(
            ReferralRow(
                id=REFERRAL,
                centre="KK-KOZANI",
                origin="KK-KOZANI",
                municipality="kozani",
                caseworker="sw",
                created_at=now,
                due=now.date(),
                idempotency_key="k",
                request_hash="h",
                body={},
            )
        )
        await session.flush()
        session.add(
            DeliveryRow(
                referral_id=REFERRAL,
                agency="opeka",
                delivery="delivered",
                attempts=1,
                reference="OPEKA/1",
                updated_at=now,
            )
        )
    yield database
    await database.dispose()


async def test_a_change_is_published_once_and_polling_stops_at_a_decision(db: Database) -> None:
    agency, publisher = Agency(), MemoryPublisher()
    poller = StatusPoller(db, agency, publisher, HubMetrics(), interval_s=1)
    assert await poller.poll_once() == 0  # the agency does not know it yet
    agency.answers["OPEKA/1"] = EnrollmentStatus.RECEIVED
    assert await poller.poll_once() == 1
    assert await poller.poll_once() == 0  # not re-sent while the projector catches up
    [record] = publisher.records
    event = decode(record.headers, record.key, record.value)
    assert isinstance(event.data, StatusChanged)
    assert (event.data.referral_id, event.data.status) == (REFERRAL, EnrollmentStatus.RECEIVED)

    async with db.transaction() as session:  # the projector applied it; the agency decides
        await session.execute(update(DeliveryRow).values(status="accepted"))
    agency.answers["OPEKA/1"] = EnrollmentStatus.ACCEPTED
    asked = len(agency.asked)
    assert await poller.poll_once() == 0
    assert len(agency.asked) == asked  # decided: no longer asked
