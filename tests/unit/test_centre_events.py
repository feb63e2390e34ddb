"""The centres' event stream through the real app served by uvicorn on loopback, over a real
database: the projector's changes recorded as centre events in their own transaction (once,
only for a real change), the SSE stream read as a client reads it, resumed with
``Last-Event-ID`` or ``?after=``, who may read it, the overdue job telling each request once,
and ``record_centre_event`` for the intake of a referral an agency made."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from sqlalchemy import select

from hub.api.app import create_app
from hub.api.deps import HubState
from hub.auth import ensure_dev_credentials
from hub.bus import KafkaCluster
from hub.centre_events import REFERRAL_RECEIVED, record_centre_event
from hub.db import CentreEventRow, Database, InformationRequestRow
from hub.leases import Leases
from hub.metrics import HubMetrics
from hub.overdue_job import OverdueJob
from hub.registry import Registry
from hub.samples import sample_referral
from hub.schema import upgrade
from hub.servers import RunningServer, start_server
from hub.settings import PushSettings, Settings
from schemas.codes import EnrollmentStatus
from tests.databases import fresh_database_url
from tests.unit.test_caseload import FOUR, Caseload


class Push(Caseload):
    """The caseload helpers plus the app served on loopback, for streams and webhooks."""

    server: RunningServer
    state: HubState

    async def events(self, centre: str = "KK-KOZANI") -> list[CentreEventRow]:
        async with self.db.sessions() as session:
            found = await session.execute(
                select(CentreEventRow)
                .where(CentreEventRow.centre == centre)
                .order_by(CentreEventRow.id)
            )
            return list(found.scalars())


async def push_env(tmp_path: Path, **settings: Any) -> AsyncIterator[Push]:
    config = Settings(
        var_dir=tmp_path,
        database_url=fresh_database_url(tmp_path),
        push=PushSettings(sse_poll_s=0.05, sse_heartbeat_s=0.2, **settings),
    )
    db = Database(config.database)
    await upgrade(db)
    registry = Registry.load(config.registry_dir)
    creds = await ensure_dev_credentials(db, registry, tmp_path / "dev-credentials.json")
    metrics = HubMetrics()
    state = HubState(config, db, registry, metrics, kafka=KafkaCluster("127.0.0.1:1"))
    app = create_app(state)
    server = await start_server(app, "127.0.0.1", 0, "api")
    async with httpx.AsyncClient(base_url=server.url) as client:
        env = Push(client, db, creds, metrics)
        env.server, env.state = server, state
        try:
            yield env
        finally:
            state.closing.set()
            await server.stop()
            await db.dispose()


@pytest.fixture
async def push(tmp_path: Path) -> AsyncIterator[Push]:
    async for env in push_env(tmp_path):
        yield env


class Stream:
    """An SSE client over aiohttp: reads messages (``id``, ``event``, ``data``) and counts
    comment lines (heartbeats)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments = 0

    async def next(self) -> dict[str, Any]:
        message: dict[str, Any] = {}
        while True:
            line = (await self.response.content.readline()).decode()
            assert line, "stream ended"
            line = line.rstrip("\n")
            if not line:
                if "data" in message:
                    return message
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(": ")
            message[name] = json.loads(value) if name == "data" else value

    async def take(self, count: int) -> list[dict[str, Any]]:
        return [await self.next() for _ in range(count)]


async def open_stream(
    session: aiohttp.ClientSession,
    env: Push,
    centre: str = "KK-KOZANI",
    headers: dict[str, str] | None = None,
    **params: Any,
) -> Stream:
    response = await session.get(
        f"{env.server.url}/v1/centres/{centre}/events",
        params=params,
        headers={**env.auth(), **(headers or {})},
    )
    assert response.status == 200, await response.text()
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = Stream(response)
    # the first chunk (retry: and a comment) says the cursor is fixed: events from now on
    assert (await response.content.readline()).startswith(b"retry: ")
    return stream


async def test_the_projector_records_each_real_change_once(push: Push) -> None:
    referral_id = await push.refer(FOUR)
    await push.answer(referral_id, "dypa")  # delivered
    await push.answer(referral_id, "dypa")  # another success of a delivered one: no news
    await push.answer(referral_id, "dypa", EnrollmentStatus.RECEIVED)
    await push.answer(referral_id, "dypa", EnrollmentStatus.RECEIVED)  # the same again
    await push.answer(referral_id, "dypa", EnrollmentStatus.ACCEPTED)
    await push.answer(referral_id, "opeka", failed="timeout")  # retrying: no news
    await push.answer(referral_id, "opeka", failed="timeout", dead=True)
    events = await push.events()
    assert [(e.type, e.data.get("agency"), e.data.get("status")) for e in events] == [
        ("referral.delivered", "dypa", None),
        ("referral.status_changed", "dypa", "received"),
        ("referral.status_changed", "dypa", "accepted"),
        ("referral.dead_lettered", "opeka", None),
    ]
    assert all(e.referral_id == e.data["referral_id"] == referral_id for e in events)
    assert events[2].data["previous"] == "received"
    assert events[3].data["error_class"] == "timeout"
    text = json.dumps([e.data for e in events])
    assert "beneficiary" not in text and "Παπαδοπούλου" not in text
    assert await push.events("KK-EORDAIA") == []


async def test_a_rolled_back_change_tells_nothing(push: Push) -> None:
    referral_id = await push.refer()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with push.db.transaction() as session:
            await record_centre_event(
                session, "KK-KOZANI", REFERRAL_RECEIVED, referral_id, origin="dypa"
            )
            raise Boom
    assert await push.events() == []
    async with push.db.transaction() as session:
        await record_centre_event(
            session, "KK-KOZANI", REFERRAL_RECEIVED, referral_id, origin="dypa"
        )
    [event] = await push.events()
    assert (event.type, event.data) == (
        "referral.received",
        {"referral_id": referral_id, "origin": "dypa"},
    )
    with pytest.raises(ValueError, match="unknown centre event type"):
        async with push.db.transaction() as session:
            await record_centre_event(session, "KK-KOZANI", "referral.lunch", referral_id)


async def test_an_agencys_referral_is_told_to_its_centre_with_the_referral(push: Push) -> None:
    body = sample_referral("KK-KOZANI", ["UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY"], seed=77)
    body["caseworker"] = "opeka-officer-3"
    headers = {**push.auth("agencies", "opeka"), "Idempotency-Key": "a-77"}
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(session, push)
        response = await push.client.post("/v1/referrals", json=body, headers=headers)
        assert response.status_code == 202, response.text
        again = await push.client.post("/v1/referrals", json=body, headers=headers)
        assert again.json()["id"] == response.json()["id"]  # a repeat tells nothing more
        [message] = await stream.take(1)
        stream.response.close()
    assert message["event"] == "referral.received"
    assert message["data"] == {
        "referral_id": response.json()["id"],
        "origin": "opeka",
        "programmes": ["UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY"],
        "routed": response.json()["routed"],
    }
    assert [e.type for e in await push.events()] == ["referral.received"]
    await push.refer()  # a centre's own referral: nothing to tell it
    assert [e.type for e in await push.events()] == ["referral.received"]


async def test_the_stream_carries_new_events_and_resumes_from_last_event_id(
    push: Push,
) -> None:
    earlier = await push.refer()
    await push.answer(earlier, "dypa")  # before the stream: not sent to a new stream
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(session, push)
        referral_id = await push.refer(FOUR)
        await push.answer(referral_id, "dypa")
        await push.answer(referral_id, "dypa", EnrollmentStatus.ACCEPTED)
        first = await stream.take(2)
        assert [(m["event"], m["data"]["referral_id"]) for m in first] == [
            ("referral.delivered", referral_id),
            ("referral.status_changed", referral_id),
        ]
        assert int(first[0]["id"]) < int(first[1]["id"])
        stream.response.close()

        await push.answer(referral_id, "opeka")  # while disconnected
        again = await open_stream(session, push, headers={"Last-Event-ID": first[1]["id"]})
        [missed] = await again.take(1)
        assert (missed["event"], missed["data"]["agency"]) == ("referral.delivered", "opeka")
        again.response.close()

        everything = await open_stream(session, push, after=0)
        replayed = await everything.take(4)
        assert [m["data"]["referral_id"] for m in replayed] == [earlier] + [referral_id] * 3
        # nothing new: the stream stays open with heartbeats (comment lines)
        heartbeats = 0
        while heartbeats < 2:
            line = await everything.response.content.readline()
            heartbeats += line == b": heartbeat\n"
        everything.response.close()


async def test_who_may_read_a_stream(push: Push) -> None:
    url = "/v1/centres/KK-KOZANI/events"
    other = await push.client.get(url, headers=push.auth(who="KK-EORDAIA"))
    assert other.status_code == 403
    agency = await push.client.get(url, headers=push.auth("agencies", "dypa"))
    assert agency.status_code == 403
    unknown = await push.client.get(
        "/v1/centres/KK-NOWHERE/events", headers=push.auth("operators", "operator")
    )
    assert unknown.status_code == 404
    anonymous = await push.client.get(url)
    assert anonymous.status_code == 401
    bad = await push.client.get(url, headers={**push.auth(), "Last-Event-ID": "x1"})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["detail"]] == ["Last-Event-ID"]
    negative = await push.client.get(url, headers=push.auth(), params={"after": -1})
    assert negative.status_code == 422
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(
            session, push, headers=push.auth("operators", "operator"), after=0
        )
        stream.response.close()


async def test_an_overdue_information_request_is_told_once(push: Push) -> None:
    referral_id = await push.refer()
    now = datetime.now(UTC)
    await push.ask(referral_id, overdue_at=now - timedelta(hours=1))
    await push.ask(referral_id, overdue_at=now + timedelta(days=3))  # not yet
    await push.ask(referral_id, overdue_at=now - timedelta(days=1), answered_at=now)
    job = OverdueJob(push.db, push.metrics, Leases(push.db))
    assert await job.tell_once() == 1
    assert await job.tell_once() == 0
    [event] = await push.events()
    async with push.db.sessions() as session:
        overdue = await session.scalar(
            select(InformationRequestRow).where(
                InformationRequestRow.overdue_at < now, InformationRequestRow.answered_at.is_(None)
            )
        )
    assert overdue is not None and overdue.overdue_told_at is not None
    assert event.type == "information_request.overdue"
    assert event.data == {
        "referral_id": referral_id,
        "request_id": overdue.id,
        "due": overdue.due.isoformat(),
    }
    assert await job.tell_once(now + timedelta(days=4)) == 1  # the second, once due
