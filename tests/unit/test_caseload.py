"""The caseload, ``GET /v1/referrals``, through the real app over a real database: pages
that neither skip nor repeat while referrals keep arriving, every filter, who sees what, bad
parameters answered 422 by name, and a page of 200 in a fixed number of statements.

Referrals are submitted through the API; agencies' answers reach the read model through the
projector, as on the bus. A Kozani referral for GMI + UNEMPLOYMENT_REGISTRATION +
SOCIAL_GROCERY + HELP_AT_HOME is routed to opeka, dypa, the social grocery and the social
service; the default sample (UNEMPLOYMENT_REGISTRATION, JOB_COUNSELLING) to dypa alone.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, update

from hub.api.app import create_app
from hub.api.deps import HubState
from hub.auth import ensure_dev_credentials
from hub.bus import KafkaCluster
from hub.db import Database, InformationRequestRow, ReferralRow
from hub.events import decode, encode
from hub.metrics import HubMetrics
from hub.projector import Projector
from hub.registry import Registry
from hub.samples import sample_referral
from hub.schema import upgrade
from hub.settings import Settings
from schemas.codes import EnrollmentStatus
from schemas.events import (
    DELIVERY_FAILED,
    DELIVERY_SUCCEEDED,
    STATUS_CHANGED,
    TOPIC_DELIVERIES,
    TOPIC_STATUS,
    DeliveryOutcome,
    StatusChanged,
)
from tests.databases import fresh_database_url
from tests.unit.test_api import Env

FOUR = ["GMI", "UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY", "HELP_AT_HOME"]


class Caseload(Env):
    """The API plus what a test needs around it: list calls, agency answers, statements."""

    seed = 1000

    async def refer(self, programmes: list[str] | None = None, who: str = "KK-KOZANI") -> str:
        Caseload.seed += 1
        municipality = who.removeprefix("KK-").lower()
        body = sample_referral(who, programmes, seed=self.seed, municipality=municipality)
        response = await self.submit(body, key=f"k-{self.seed}", who=who)
        assert response.status_code == 202, response.text
        referral_id: str = response.json()["id"]
        return referral_id

    async def list(
        self, kind: str = "centres", who: str = "KK-KOZANI", **params: Any
    ) -> httpx.Response:
        return await self.client.get("/v1/referrals", params=params, headers=self.auth(kind, who))

    async def ids(self, kind: str = "centres", who: str = "KK-KOZANI", **params: Any) -> list[str]:
        response = await self.list(kind, who, **params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    async def answer(
        self,
        referral_id: str,
        agency: str,
        status: EnrollmentStatus | None = None,
        *,
        failed: str | None = None,
        dead: bool = False,
    ) -> None:
        """What the agency's connector would publish: an outcome, or a status."""
        now = datetime.now(UTC)
        if status is not None:
            data: StatusChanged | DeliveryOutcome = StatusChanged(
                referral_id=referral_id, agency=agency, status=status, occurred_at=now
            )
            record = encode(TOPIC_STATUS, STATUS_CHANGED, data, key=referral_id)
        else:
            data = DeliveryOutcome(
                referral_id=referral_id,
                agency=agency,
                succeeded=failed is None,
                attempts=1,
                reference=None if failed else f"{agency.upper()}-1",
                error_class=failed,
                dead_lettered=dead,
                occurred_at=now,
                submitted_event_id="e-1",
            )
            kind = DELIVERY_FAILED if failed else DELIVERY_SUCCEEDED
            record = encode(TOPIC_DELIVERIES, kind, data, key=referral_id)
        assert await Projector(self.db, self.metrics).apply(
            decode(record.headers, record.key, record.value)
        )

    async def ask(
        self, referral_id: str, *, overdue_at: datetime, answered_at: datetime | None = None
    ) -> None:
        """An information request about ``referral_id`` whose due day ends at ``overdue_at``."""
        async with self.db.transaction() as session:
            session.add(
                InformationRequestRow(
                    id=str(uuid.uuid4()),
                    referral_id=referral_id,
                    centre="KK-KOZANI",
                    requested_at=overdue_at - timedelta(days=14),
                    channel="phone",
                    due=(overdue_at - timedelta(days=1)).date(),
                    overdue_at=overdue_at,
                    answered_at=answered_at,
                    created_at=datetime.now(UTC),
                )
            )

    async def set_referral(self, referral_id: str, **values: Any) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(ReferralRow).where(ReferralRow.id == referral_id).values(**values)
            )

    @contextmanager
    def statements(self) -> Iterator[list[str]]:
        """The SQL statements run meanwhile, leaving out the token cache's own reads."""
        seen: list[str] = []

        def record(*args: Any) -> None:
            statement = args[2]
            if "credentials" not in statement:
                seen.append(statement)

        engine = self.db.engine.sync_engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            yield seen
        finally:
            event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
async def cl(tmp_path: Path) -> AsyncIterator[Caseload]:
    settings = Settings(var_dir=tmp_path, database_url=fresh_database_url(tmp_path))
    db = Database(settings.database)
    await upgrade(db)
    registry = Registry.load(settings.registry_dir)
    creds = await ensure_dev_credentials(db, registry, tmp_path / "dev-credentials.json")
    metrics = HubMetrics()
    state = HubState(settings, db, registry, metrics, kafka=KafkaCluster("127.0.0.1:1"))
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield Caseload(client, db, creds, metrics)
    await db.dispose()


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [error["field"] for error in response.json()["detail"]]


async def test_pages_are_newest_first_and_stable_while_referrals_arrive(cl: Caseload) -> None:
    """Seven referrals, pages of three, two more submitted between pages: every one of the
    seven is listed exactly once, in order; the newcomers sort before the first page."""
    first = [await cl.refer() for _ in range(7)]
    # Three share one instant: the id breaks the tie, and a page boundary falls among them.
    same = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    for referral_id in first[2:5]:
        await cl.set_referral(referral_id, created_at=same)
    async with cl.db.sessions() as session:
        rows = (await session.execute(select(ReferralRow.created_at, ReferralRow.id))).all()
    expected = [i for _, i in sorted(rows, reverse=True)]

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await cl.list(**params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        pages += 1
        await cl.refer()  # arrives between pages
        await cl.refer()
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert seen == expected
    assert pages == 3
    assert len(await cl.ids(limit=200)) == 7 + 2 * pages


async def test_limit_defaults_to_50_and_stays_within_1_to_200(cl: Caseload) -> None:
    for _ in range(51):
        await cl.refer()
    page = (await cl.list()).json()
    assert len(page["items"]) == 50 and page["next_cursor"]
    assert len((await cl.list(limit=200)).json()["items"]) == 51
    for bad in (0, -1, 201, "many"):
        assert fields(await cl.list(limit=bad)) == ["limit"]


async def test_items_are_the_referral_view(cl: Caseload) -> None:
    referral_id = await cl.refer(FOUR)
    await cl.answer(referral_id, "dypa")
    [item] = (await cl.list()).json()["items"]
    single = (await cl.client.get(f"/v1/referrals/{referral_id}", headers=cl.auth())).json()
    assert item == single
    assert item["origin"] == item["centre"] == "KK-KOZANI"
    assert [a["agency"] for a in item["agencies"]] == [
        "opeka",
        "dypa",
        "kozani-social-grocery",
        "kozani-social-service",
    ]
    assert [t["kind"] for t in item["timeline"]] == ["submitted", "delivered"]


async def test_who_sees_what(cl: Caseload) -> None:
    kozani = await cl.refer(FOUR)
    to_dypa = await cl.refer()  # dypa only
    eordaia = await cl.refer(who="KK-EORDAIA")  # dypa only, another centre
    await cl.answer(kozani, "opeka", EnrollmentStatus.REJECTED)
    await cl.answer(kozani, "dypa", EnrollmentStatus.RECEIVED)

    # A centre: its own, by default or by name; another centre's is 403.
    assert await cl.ids() == [to_dypa, kozani]
    assert await cl.ids(centre="KK-KOZANI") == [to_dypa, kozani]
    assert await cl.ids(who="KK-EORDAIA") == [eordaia]
    assert (await cl.list(centre="KK-EORDAIA")).status_code == 403
    assert (await cl.list(centre="KK-ATLANTIS")).status_code == 403

    # An operator: everything, and any centre by name.
    assert await cl.ids("operators", "operator") == [eordaia, to_dypa, kozani]
    assert await cl.ids("operators", "operator", centre="KK-EORDAIA") == [eordaia]

    # An agency: what was routed to it, from any centre; nothing else.
    assert await cl.ids("agencies", "dypa") == [eordaia, to_dypa, kozani]
    assert await cl.ids("agencies", "opeka") == [kozani]
    assert await cl.ids("agencies", "karpenisi-social-service") == []
    assert await cl.ids("agencies", "dypa", centre="KK-EORDAIA") == [eordaia]

    # ...and of a referral it did not make, only its own part: not that ΟΠΕΚΑ refused.
    [item] = (await cl.list("agencies", "dypa", centre="KK-KOZANI", limit=1)).json()["items"]
    assert item["id"] == to_dypa
    page = (await cl.list("agencies", "dypa", centre="KK-KOZANI")).json()["items"]
    mine = next(i for i in page if i["id"] == kozani)
    assert [(a["agency"], a["status"]) for a in mine["agencies"]] == [("dypa", "received")]
    assert {t["agency"] for t in mine["timeline"]} == {"dypa"}
    assert "opeka" not in str(mine)
    assert await cl.ids("agencies", "dypa", status="rejected") == []
    assert await cl.ids("agencies", "dypa", agency="opeka") == []
    assert await cl.ids("agencies", "dypa", programme="GMI") == []  # not dypa's to know
    assert await cl.ids("agencies", "dypa", programme="UNEMPLOYMENT_REGISTRATION") == [
        eordaia,
        to_dypa,
        kozani,
    ]
    single = await cl.client.get(f"/v1/referrals/{kozani}", headers=cl.auth("agencies", "dypa"))
    assert single.json() == mine
    assert (
        await cl.client.get(f"/v1/referrals/{to_dypa}", headers=cl.auth("agencies", "opeka"))
    ).status_code == 403
    assert (await cl.client.get("/v1/referrals")).status_code == 401


async def test_every_filter(cl: Caseload) -> None:
    four = await cl.refer(FOUR)
    two = await cl.refer(["GMI", "UNEMPLOYMENT_REGISTRATION"])  # opeka, dypa
    one = await cl.refer()  # dypa
    other = await cl.refer(who="KK-EORDAIA")
    await cl.answer(four, "opeka", EnrollmentStatus.ACCEPTED)
    await cl.answer(four, "dypa")
    await cl.answer(two, "opeka", EnrollmentStatus.REJECTED)
    await cl.answer(two, "dypa", failed="timeout")
    await cl.answer(one, "dypa", failed="auth_rejected", dead=True)
    operator = ("operators", "operator")

    assert await cl.ids(*operator, agency="kozani-social-grocery") == [four]
    assert await cl.ids(*operator, agency="opeka") == [two, four]
    assert await cl.ids(*operator, programme="GMI") == [two, four]
    assert await cl.ids(*operator, programme="JOB_COUNSELLING") == [other, one]
    assert await cl.ids(*operator, programme="HOMELESS_SHELTER") == []
    assert await cl.ids(*operator, status="accepted") == [four]
    assert await cl.ids(*operator, status="rejected") == [two]
    assert await cl.ids(*operator, delivery="delivered") == [four]
    assert await cl.ids(*operator, delivery="retrying") == [two]
    assert await cl.ids(*operator, delivery="dead_lettered") == [one]
    assert await cl.ids(*operator, delivery="pending") == [other, two, four]
    assert await cl.ids(*operator, delivery="withdrawn") == []
    assert await cl.ids(*operator, origin="KK-EORDAIA") == [other]
    assert await cl.ids(*operator, origin="KK-KOZANI") == [one, two, four]
    assert await cl.ids(*operator, origin="dypa") == []  # agencies refer from part 6 on
    assert await cl.ids(*operator, centre="KK-KOZANI", programme="GMI", status="rejected") == [two]

    # agency, status and delivery speak of one and the same agency's delivery
    assert await cl.ids(*operator, agency="opeka", status="rejected") == [two]
    assert await cl.ids(*operator, agency="dypa", status="rejected") == []
    assert await cl.ids(*operator, agency="dypa", delivery="retrying") == [two]
    assert await cl.ids(*operator, agency="opeka", delivery="retrying") == []

    # overdue, the information duty: a request still open after the end of its due day
    past = datetime.now(UTC) - timedelta(hours=1)
    await cl.ask(four, overdue_at=past)  # open and late: overdue
    await cl.ask(one, overdue_at=past, answered_at=past - timedelta(days=1))  # answered
    await cl.ask(two, overdue_at=datetime.now(UTC) + timedelta(days=3))  # open, not yet due
    assert await cl.ids(*operator, overdue="true") == [four]
    assert await cl.ids(*operator, overdue="false") == [other, one, two]
    views = (await cl.list(*operator)).json()["items"]
    assert [v["id"] for v in views if v["overdue"]] == [four]
    asked = {v["id"]: len(v["information_requests"]) for v in views}
    assert asked == {other: 0, four: 1, one: 1, two: 1}

    # updated_since: a delivery or status change at or after it, however the offset is written
    since = datetime.now(UTC)
    await cl.answer(two, "opeka", EnrollmentStatus.COMPLETED)
    await cl.answer(other, "dypa")
    athens = since.astimezone(timezone(timedelta(hours=2)))
    assert await cl.ids(*operator, updated_since=since.isoformat()) == [other, two]
    assert await cl.ids(*operator, updated_since=athens.isoformat()) == [other, two]
    assert await cl.ids(*operator, updated_since=since.isoformat(), centre="KK-KOZANI") == [two]
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert await cl.ids(*operator, updated_since=later) == []


async def test_pages_keep_their_filters(cl: Caseload) -> None:
    """A filtered listing pages through the filtered set; its cursor serves only it."""
    wanted = [await cl.refer(["GMI"]) for _ in range(5)]
    for _ in range(3):
        await cl.refer()
    first = (await cl.list(programme="GMI", limit=2)).json()
    seen = [i["id"] for i in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = (await cl.list(programme="GMI", limit=2, cursor=cursor)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert seen == wanted[::-1]
    other = await cl.list(programme="SOCIAL_GROCERY", limit=2, cursor=first["next_cursor"])
    assert fields(other) == ["cursor"]
    operator = await cl.list(
        "operators", "operator", programme="GMI", limit=2, cursor=first["next_cursor"]
    )
    assert fields(operator) == ["cursor"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"programme": "FREE_HOLIDAYS"}, "programme"),
        ({"status": "maybe"}, "status"),
        ({"delivery": "lost"}, "delivery"),
        ({"overdue": "perhaps"}, "overdue"),
        ({"updated_since": "2026-11-20T09:30:00"}, "updated_since"),  # naive
        ({"updated_since": "yesterday"}, "updated_since"),
        ({"updated_since": "2026-11-20T09:30:00 02:00"}, "updated_since"),  # an unescaped +
        ({"centre": "KK-ATLANTIS"}, "centre"),
        ({"agency": "acme"}, "agency"),
        ({"origin": "acme"}, "origin"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "eyJ4IjoxfQ"}, "cursor"),  # base64 of {"x":1}
        ({"cursor": "x" * 201}, "cursor"),
        ({"limit": "201"}, "limit"),
    ],
    ids=lambda value: str(value)[:30] if isinstance(value, dict) else value,
)
async def test_bad_parameters_are_422_naming_the_parameter(
    cl: Caseload, params: dict[str, str], field: str
) -> None:
    response = await cl.list("operators", "operator", **params)
    assert fields(response) == [field]
    assert response.json()["detail"][0]["loc"] == ["query", field]
    assert "diasyndesi_intake_rejected_total{" not in (await cl.client.get("/metrics")).text


async def test_an_altered_cursor_is_422(cl: Caseload) -> None:
    ids = [await cl.refer() for _ in range(3)]
    cursor = (await cl.list(limit=1)).json()["next_cursor"]
    version, at, referral_id, digest = json.loads(
        base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    )
    assert referral_id == ids[-1]
    for changed in (
        ["2", at, referral_id, digest],  # another format
        [version, at, ids[0], digest],  # another position, the digest left as it was
        [version, "2027-01-01T00:00:00+00:00", referral_id, digest],
        [version, at.removesuffix("+00:00"), referral_id, digest],  # naive
        [version, at, referral_id, digest[:-1]],
        [version, at, referral_id],
        {"at": at},
    ):
        altered = base64.urlsafe_b64encode(json.dumps(changed).encode()).rstrip(b"=").decode()
        assert fields(await cl.list(limit=1, cursor=altered)) == ["cursor"]
    assert fields(await cl.list(limit=1, cursor=cursor[:-2])) == ["cursor"]
    assert fields(await cl.list(limit=1, cursor=cursor + "A")) == ["cursor"]
    assert (await cl.list(limit=1, cursor=cursor)).status_code == 200


async def test_a_page_of_200_costs_as_many_statements_as_a_page_of_1(cl: Caseload) -> None:
    """No query per referral: the page, its deliveries and its timelines are three
    statements whatever the page holds (here 200 referrals, 800 deliveries, 1,400 timeline
    entries)."""
    ids = [await cl.refer(FOUR) for _ in range(200)]
    for referral_id in ids[::2]:
        await cl.answer(referral_id, "dypa")
        await cl.answer(referral_id, "dypa", EnrollmentStatus.RECEIVED)
        await cl.answer(referral_id, "opeka", failed="timeout")
    await cl.list(limit=1)  # the token is cached from here on
    counts = {}
    for kind, who in (("centres", "KK-KOZANI"), ("operators", "operator"), ("agencies", "dypa")):
        for limit in (1, 200):
            with cl.statements() as statements:
                response = await cl.list(kind, who, limit=limit, programme="GMI")
            assert response.status_code == 200
            items = response.json()["items"]
            assert len(items) == (limit if kind != "agencies" else 0)  # GMI is not dypa's
            counts[(who, limit)] = len(statements)
        with cl.statements() as statements:
            page = (await cl.list(kind, who, limit=200, overdue="false")).json()["items"]
        assert len(page) == 200
        # the page, its deliveries, its timeline and (not for an agency) its requests
        assert len(statements) == (3 if kind == "agencies" else 4), statements
    assert set(counts.values()) <= {1, 4}, counts
    assert counts[("KK-KOZANI", 1)] == counts[("KK-KOZANI", 200)] == 4
    assert counts[("operator", 1)] == counts[("operator", 200)] == 4
