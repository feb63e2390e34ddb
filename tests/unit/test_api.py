"""The intake API in-process (httpx ASGI transport) over a real SQLite file: auth,
idempotency, validation and privacy of error answers. No broker is needed to accept."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from hub.api.app import create_app
from hub.api.deps import HubState
from hub.auth import ensure_dev_credentials
from hub.bus import KafkaCluster
from hub.db import (
    Database,
    DeliveryRow,
    OutboxRow,
    ProcessedEventRow,
    ReferralRow,
    TimelineRow,
)
from hub.metrics import HubMetrics
from hub.outbox import redrive_unfinished
from hub.registry import Registry
from hub.retry_topics import H_REDRIVE_FOR
from hub.samples import make_amka, sample_referral
from hub.schema import upgrade
from hub.settings import Settings
from schemas.codes import ProgrammeCode
from schemas.events import REFERRAL_SUBMITTED, STATUS_CHANGED
from tests.databases import fresh_database_url


class Env:
    def __init__(
        self,
        client: httpx.AsyncClient,
        db: Database,
        creds: dict[str, dict[str, str]],
        metrics: HubMetrics,
    ) -> None:
        self.client = client
        self.db = db
        self.creds = creds
        self.metrics = metrics
        self.wakes = 0

    def auth(self, kind: str = "centres", who: str = "KK-KOZANI") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds[kind][who]}"}

    async def submit(
        self, body: dict[str, Any], key: str | None = "k-1", who: str = "KK-KOZANI"
    ) -> httpx.Response:
        headers = self.auth(who=who)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.post("/v1/referrals", json=body, headers=headers)

    async def count(self, table: Any) -> int:
        async with self.db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(table)) or 0)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = Settings(var_dir=tmp_path, database_url=fresh_database_url(tmp_path))
    db = Database(settings.database)
    await upgrade(db)
    registry = Registry.load(settings.registry_dir)
    creds = await ensure_dev_credentials(db, registry, tmp_path / "dev-credentials.json")
    metrics = HubMetrics()
    state = HubState(settings, db, registry, metrics, kafka=KafkaCluster("127.0.0.1:1"))
    app = create_app(state)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        environment = Env(client, db, creds, metrics)

        def wake() -> None:
            environment.wakes += 1

        state.wake_relay = wake
        yield environment
    await db.dispose()


async def test_accepts_a_referral_with_its_outbox_record_in_one_go(env: Env) -> None:
    response = await env.submit(sample_referral(seed=1))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["routed"] == ["dypa"]
    assert body["status_url"].endswith(f"/v1/referrals/{body['id']}")
    assert response.headers["location"] == f"/v1/referrals/{body['id']}"
    async with env.db.sessions() as session:
        outbox = (await session.execute(select(OutboxRow))).scalars().all()
        deliveries = (await session.execute(select(DeliveryRow))).scalars().all()
    assert [(o.referral_id, o.event_type, o.key) for o in outbox] == [
        (body["id"], REFERRAL_SUBMITTED, body["id"].encode())
    ]
    assert outbox[0].sent_at is None
    assert [(d.agency, d.delivery, d.attempts) for d in deliveries] == [("dypa", "pending", 0)]
    assert env.wakes == 1

    view = (await env.client.get(f"/v1/referrals/{body['id']}", headers=env.auth())).json()
    assert view["centre"] == view["origin"] == "KK-KOZANI"
    assert view["agencies"][0]["agency"] == "dypa"
    assert view["agencies"][0]["delivery"] == "pending"
    assert view["agencies"][0]["status"] is None
    assert view["agencies"][0]["due"] == view["due"]
    assert [t["kind"] for t in view["timeline"]] == ["submitted"]
    assert "beneficiary" not in json.dumps(view)


async def test_same_key_same_body_returns_the_same_referral(env: Env) -> None:
    body = sample_referral(seed=2)
    first = await env.submit(body, key="same")
    second = await env.submit(body, key="same")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert await env.count(ReferralRow) == 1
    assert await env.count(OutboxRow) == 1
    assert env.wakes == 1


async def test_same_key_different_body_is_refused(env: Env) -> None:
    assert (await env.submit(sample_referral(seed=3), key="reused")).status_code == 202
    other = await env.submit(sample_referral(seed=4), key="reused")
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["detail"]
    assert await env.count(ReferralRow) == 1


async def test_the_same_key_at_two_centres_is_two_referrals(env: Env) -> None:
    kozani = await env.submit(sample_referral(seed=5), key="k")
    body = sample_referral("KK-EORDAIA", seed=5, municipality="eordaia")
    eordaia = await env.submit(body, key="k", who="KK-EORDAIA")
    assert kozani.status_code == eordaia.status_code == 202
    assert kozani.json()["id"] != eordaia.json()["id"]


def _amka_mismatch(body: dict[str, Any]) -> None:
    body["beneficiary"]["identifier"]["value"] = make_amka(
        __import__("datetime").date(1975, 5, 5), 1234
    )


def _bad_checksum(body: dict[str, Any]) -> None:
    value = body["beneficiary"]["identifier"]["value"]
    body["beneficiary"]["identifier"]["value"] = value[:-1] + str((int(value[-1]) + 1) % 10)


def _grevena(programmes: list[str]) -> Any:
    """Grevena has no social grocery or municipal social service in the registry (the
    person lives there too: routing follows the municipality of residence)."""

    def change(body: dict[str, Any]) -> None:
        body.update(centre="KK-GREVENA", programmes=programmes)
        body["beneficiary"]["address"]["municipality"] = "grevena"

    return change


def _bad_afm(body: dict[str, Any]) -> None:
    afm = body["beneficiary"]["afm"]
    body["beneficiary"]["afm"] = afm[:-1] + str((int(afm[-1]) + 1) % 10)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_bad_checksum, "beneficiary.identifier.value"),
        (_amka_mismatch, "beneficiary"),
        (_bad_afm, "beneficiary.afm"),
        (lambda b: b.update(programmes=["FREE_HOLIDAYS"]), "programmes.0"),
        (lambda b: b.update(favourite_colour="blue"), "favourite_colour"),
        (lambda b: b["beneficiary"].update(shoe_size=43), "beneficiary.shoe_size"),
        (lambda b: b.update(centre="KK-ATLANTIS"), "centre"),
        (_grevena(["SOCIAL_GROCERY"]), "programmes.0"),
        (_grevena(["JOB_COUNSELLING", "HOMELESS_SHELTER"]), "programmes.1"),
    ],
    ids=[
        "amka-checksum",
        "amka-birth-date",
        "afm",
        "unknown-programme",
        "unknown-field",
        "unknown-nested-field",
        "unknown-centre",
        "unserved-programme",
        "second-unserved",
    ],
)
async def test_bad_input_names_the_field_and_stores_nothing(
    env: Env, change: Any, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = sample_referral(seed=6)
    change(body)
    with caplog.at_level(logging.DEBUG):
        response = await env.submit(
            body, who=body["centre"] if body["centre"] in env.creds["centres"] else "KK-KOZANI"
        )
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert field in [e["field"] for e in errors], errors
    text = response.text + caplog.text
    for secret in (
        body["beneficiary"]["identifier"]["value"],
        body["beneficiary"]["afm"],
        body["beneficiary"]["family_name"],
    ):
        assert secret not in text
    for table in (ReferralRow, DeliveryRow, OutboxRow, TimelineRow):
        assert await env.count(table) == 0


async def test_missing_or_wrong_token_is_401(env: Env) -> None:
    body = sample_referral(seed=7)
    none = await env.client.post("/v1/referrals", json=body, headers={"Idempotency-Key": "x"})
    wrong = await env.client.post(
        "/v1/referrals", json=body, headers={"Idempotency-Key": "x", "Authorization": "Bearer nope"}
    )
    assert none.status_code == wrong.status_code == 401
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert await env.count(ReferralRow) == 0


async def test_a_centre_acting_for_another_and_an_operator_are_403(env: Env) -> None:
    body = sample_referral(seed=8)  # KK-KOZANI's referral
    response = await env.submit(body, who="KK-FLORINA")
    assert response.status_code == 403
    operator = await env.client.post(
        "/v1/referrals",
        json=body,
        headers={**env.auth("operators", "operator"), "Idempotency-Key": "a"},
    )
    assert operator.status_code == 403
    assert await env.count(ReferralRow) == 0


async def test_missing_idempotency_key_is_400_even_with_a_bad_body(env: Env) -> None:
    response = await env.submit({"nonsense": True}, key=None)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]


async def test_oversized_body_is_413(env: Env) -> None:
    body = sample_referral(seed=9)
    body["notes"] = "α" * 40_000  # 80 KB in UTF-8, over the 64 KiB limit
    response = await env.submit(body)
    assert response.status_code == 413
    assert await env.count(ReferralRow) == 0


async def test_oversized_chunked_body_is_413(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b" " * 1024

    response = await env.client.post(
        "/v1/referrals",
        content=chunks(),
        headers={**env.auth(), "Idempotency-Key": "c", "Content-Type": "application/json"},
    )
    assert response.status_code == 413


async def test_malformed_json_is_422_without_echo(env: Env) -> None:
    response = await env.client.post(
        "/v1/referrals",
        content=b'{"centre": "KK-KOZANI", "beneficiary": {"afm": "094',
        headers={**env.auth(), "Idempotency-Key": "m", "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "094" not in response.text


async def test_read_access_is_limited_to_the_owning_centre_operators_and_routed_agencies(
    env: Env,
) -> None:
    referral_id = (await env.submit(sample_referral(seed=10))).json()["id"]  # routed to dypa
    url = f"/v1/referrals/{referral_id}"
    assert (await env.client.get(url, headers=env.auth())).status_code == 200
    assert (await env.client.get(url, headers=env.auth("operators", "operator"))).status_code == 200
    assert (await env.client.get(url, headers=env.auth(who="KK-GREVENA"))).status_code == 403
    assert (await env.client.get(url, headers=env.auth("agencies", "opeka"))).status_code == 403
    routed = await env.client.get(url, headers=env.auth("agencies", "dypa"))
    assert routed.status_code == 200
    assert [a["agency"] for a in routed.json()["agencies"]] == ["dypa"]
    assert (await env.client.get(url)).status_code == 401
    missing = await env.client.get(
        "/v1/referrals/00000000-0000-4000-8000-000000000000", headers=env.auth()
    )
    assert missing.status_code == 404


async def test_agency_status_only_from_that_agency_for_its_referrals(env: Env) -> None:
    referral_id = (await env.submit(sample_referral(seed=11))).json()["id"]
    update = {
        "referral_id": referral_id,
        "status": "received",
        "reference": "DYPA-1",
        "occurred_at": "2026-11-21T10:00:00+00:00",
    }
    ok = await env.client.post(
        "/v1/agencies/dypa/status", json=update, headers=env.auth("agencies", "dypa")
    )
    assert ok.status_code == 202, ok.text
    other = await env.client.post(
        "/v1/agencies/dypa/status", json=update, headers=env.auth("agencies", "opeka")
    )
    assert other.status_code == 403
    centre = await env.client.post("/v1/agencies/dypa/status", json=update, headers=env.auth())
    assert centre.status_code == 403
    not_routed = await env.client.post(
        "/v1/agencies/opeka/status", json=update, headers=env.auth("agencies", "opeka")
    )
    assert not_routed.status_code == 404
    bad = await env.client.post(
        "/v1/agencies/dypa/status",
        json={**update, "status": "maybe"},
        headers=env.auth("agencies", "dypa"),
    )
    assert bad.status_code == 422
    async with env.db.sessions() as session:
        types = (await session.execute(select(OutboxRow.event_type))).scalars().all()
    assert sorted(types) == sorted([REFERRAL_SUBMITTED, STATUS_CHANGED])


async def test_registries_and_health_and_metrics(env: Env) -> None:
    agencies = (await env.client.get("/v1/agencies", headers=env.auth())).json()
    assert {a["id"] for a in agencies} >= {"opeka", "dypa", "kozani-social-grocery"}
    programmes = (await env.client.get("/v1/programmes", headers=env.auth())).json()
    assert len(programmes) == len(ProgrammeCode) == 21
    assert (await env.client.get("/healthz")).json() == {"status": "ok"}
    ready = await env.client.get("/readyz")  # the broker address is unreachable here
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    await env.submit(sample_referral(seed=12))
    metrics = (await env.client.get("/metrics")).text
    assert "diasyndesi_referrals_accepted_total 1.0" in metrics
    assert "diasyndesi_outbox_backlog" in metrics


async def test_redrive_requeues_what_a_lost_broker_took_with_it(env: Env) -> None:
    """After the memory-only broker restarts, unfinished referrals and status events the
    projector never applied are queued again; applied ones are not."""
    referral_id = (await env.submit(sample_referral(seed=13))).json()["id"]
    for status_name in ("received", "accepted"):
        update = {
            "referral_id": referral_id,
            "status": status_name,
            "reference": "DYPA-9",
            "occurred_at": "2026-11-21T10:00:00+00:00",
        }
        pushed = await env.client.post(
            "/v1/agencies/dypa/status", json=update, headers=env.auth("agencies", "dypa")
        )
        assert pushed.status_code == 202
    async with env.db.transaction() as session:
        rows = (await session.execute(select(OutboxRow).order_by(OutboxRow.id))).scalars().all()
        for row in rows:
            row.sent_at = datetime.now(UTC)
        applied = rows[1].event_id  # the first status event reached the read model
        session.add(ProcessedEventRow(event_id=applied, processed_at=datetime.now(UTC)))
    assert await redrive_unfinished(env.db) == 2  # the referral and the unapplied status
    async with env.db.sessions() as session:
        queued = (
            (
                await session.execute(
                    select(OutboxRow.event_type)
                    .where(OutboxRow.sent_at.is_(None))
                    .order_by(OutboxRow.id)
                )
            )
            .scalars()
            .all()
        )
    assert queued == [REFERRAL_SUBMITTED, STATUS_CHANGED]


async def test_redrive_names_only_the_agencies_still_owed(env: Env) -> None:
    """A re-driven referral record carries the agencies whose delivery is unfinished, so
    connectors of agencies that already have it do not call them again."""
    body = sample_referral(seed=14, programmes=["GMI", "UNEMPLOYMENT_REGISTRATION"])
    referral_id = (await env.submit(body)).json()["id"]
    async with env.db.transaction() as session:
        for row in (await session.execute(select(OutboxRow))).scalars():
            row.sent_at = datetime.now(UTC)
        deliveries = (
            (
                await session.execute(
                    select(DeliveryRow).where(DeliveryRow.referral_id == referral_id)
                )
            )
            .scalars()
            .all()
        )
        assert sorted(d.agency for d in deliveries) == ["dypa", "opeka"]
        next(d for d in deliveries if d.agency == "opeka").delivery = "delivered"

    assert await redrive_unfinished(env.db) == 1
    assert await redrive_unfinished(env.db) == 0  # already queued: nothing new
    async with env.db.sessions() as session:
        [row] = (
            (await session.execute(select(OutboxRow).where(OutboxRow.sent_at.is_(None))))
            .scalars()
            .all()
        )
    assert [v for k, v in row.headers if k == H_REDRIVE_FOR] == ["dypa"]


async def test_a_delivery_with_no_outcome_for_too_long_is_redriven(env: Env) -> None:
    """Anti-entropy: a referral whose event went out long ago but one delivery never got any
    outcome is re-sent for that agency only; young, retrying and often re-sent ones are not."""
    from datetime import timedelta

    from hub.outbox import redrive_stale

    body = sample_referral(seed=15, programmes=["GMI", "UNEMPLOYMENT_REGISTRATION"])
    referral_id = (await env.submit(body)).json()["id"]

    async def age(seconds: float, publishes: int = 1) -> None:
        async with env.db.transaction() as session:
            for row in (await session.execute(select(OutboxRow))).scalars():
                row.sent_at = datetime.now(UTC) - timedelta(seconds=seconds)
                row.publish_count = publishes

    async def set_state(agency: str, state: str) -> None:
        async with env.db.transaction() as session:
            row = (
                await session.execute(
                    select(DeliveryRow).where(
                        DeliveryRow.referral_id == referral_id, DeliveryRow.agency == agency
                    )
                )
            ).scalar_one()
            row.delivery = state

    await age(30)
    assert await redrive_stale(env.db, older_than_s=120) == 0  # still young
    await age(300, publishes=5)
    assert await redrive_stale(env.db, older_than_s=120) == 0  # re-sent enough already
    await set_state("opeka", "delivered")
    await set_state("dypa", "retrying")
    await age(300)
    assert await redrive_stale(env.db, older_than_s=120) == 0  # retry topics own it
    await set_state("dypa", "pending")
    assert await redrive_stale(env.db, older_than_s=120) == 1
    async with env.db.sessions() as session:
        [row] = (
            (await session.execute(select(OutboxRow).where(OutboxRow.sent_at.is_(None))))
            .scalars()
            .all()
        )
    assert [v for k, v in row.headers if k == H_REDRIVE_FOR] == ["dypa"]


async def test_an_older_or_repeated_status_never_overwrites_a_newer_one(env: Env) -> None:
    """Agencies' pushes arrive late, out of order or twice (a push retried after a timeout the
    hub had already answered, with a fresh event id): the read model keeps the newest."""
    from datetime import timedelta

    from hub.events import decode, encode
    from hub.projector import Projector
    from schemas.codes import EnrollmentStatus
    from schemas.events import TOPIC_STATUS, StatusChanged

    referral_id = (await env.submit(sample_referral(seed=16))).json()["id"]
    projector = Projector(env.db, env.metrics)
    t0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

    async def push(status: EnrollmentStatus, at: datetime) -> None:
        data = StatusChanged(referral_id=referral_id, agency="dypa", status=status, occurred_at=at)
        record = encode(TOPIC_STATUS, STATUS_CHANGED, data, key=referral_id)
        assert await projector.apply(decode(record.headers, record.key, record.value))

    async def shown() -> tuple[str | None, list[str]]:
        async with env.db.sessions() as session:
            row = (
                await session.execute(
                    select(DeliveryRow).where(DeliveryRow.referral_id == referral_id)
                )
            ).scalar_one()
            timeline = (
                await session.execute(
                    select(TimelineRow.detail)
                    .where(TimelineRow.referral_id == referral_id, TimelineRow.kind == "status")
                    .order_by(TimelineRow.at)
                )
            ).scalars()
            return row.status, [str(d) for d in timeline]

    await push(EnrollmentStatus.RECEIVED, t0)
    await push(EnrollmentStatus.ACCEPTED, t0 + timedelta(seconds=1))
    await push(EnrollmentStatus.RECEIVED, t0)  # the retried push, arriving last
    await push(EnrollmentStatus.ACCEPTED, t0 + timedelta(seconds=1))  # a plain repeat
    assert await shown() == ("accepted", ["received", "accepted"])
    await push(EnrollmentStatus.ENROLLED, t0 + timedelta(seconds=2))
    assert await shown() == ("enrolled", ["received", "accepted", "enrolled"])


async def test_an_unreachable_database_is_a_503_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    db = Database("postgresql+asyncpg://hub:pw@127.0.0.1:1/diasyndesi")
    registry = Registry.load(settings.registry_dir)
    state = HubState(settings, db, registry, HubMetrics(), kafka=KafkaCluster("x:1"))
    transport = httpx.ASGITransport(app=create_app(state))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            response = await client.post(
                "/v1/referrals",
                json=sample_referral(seed=3),
                headers={"Authorization": "Bearer dsy_cen_x", "Idempotency-Key": "k"},
            )
    finally:
        await db.dispose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "the database is unavailable; try again shortly"}
