"""The information duty over the API (hub/api/information_requests.py), in-process over a
real, migrated database with the referral API tests' ``env`` fixture: recording, answering,
the referral view, the calendar call, listing with a cursor, refusals and privacy."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import tests.unit.test_api as referral_api
from hub.db import InformationRequestRow, TimelineRow
from hub.duty_calendar import athens_date
from hub.registry import Registry
from hub.samples import sample_referral
from hub.settings import packaged_dir
from tests.unit.test_api import Env

env = referral_api.env  # the same fixture: the real app over a migrated database

KEYS = {"id", "referral_id", "requested_at", "channel", "due", "answered_at", "overdue"}
SUMMARY = "Ενημερώθηκε τηλεφωνικά η κ. Παπαδοπούλου για το ΚΕΑ"  # stands for personal data
REGISTRY = Registry.load(packaged_dir("registry"))


def iso(moment: datetime) -> str:
    return moment.isoformat()


def athens_now(minutes: float = 0) -> str:
    """Now (plus ``minutes``) as a centre's system in Athens in winter would send it."""
    offset = timedelta(hours=2)
    moment = datetime.now(UTC) + timedelta(minutes=minutes)
    return (moment + offset).replace(tzinfo=None).isoformat() + "+02:00"


async def referral(env: Env, seed: int, centre: str = "KK-KOZANI") -> str:
    body = sample_referral(centre, seed=seed, municipality=centre.removeprefix("KK-").lower())
    response = await env.submit(body, key=f"k-{seed}", who=centre)
    assert response.status_code == 202, response.text
    referral_id: str = response.json()["id"]
    return referral_id


async def ask(
    env: Env,
    referral_id: str,
    requested_at: str,
    channel: str = "phone",
    who: str = "KK-KOZANI",
    kind: str = "centres",
) -> httpx.Response:
    return await env.client.post(
        f"/v1/referrals/{referral_id}/information-requests",
        json={"requested_at": requested_at, "channel": channel},
        headers=env.auth(kind, who),
    )


async def answer(
    env: Env,
    referral_id: str,
    request_id: str,
    body: dict[str, Any],
    who: str = "KK-KOZANI",
    kind: str = "centres",
) -> httpx.Response:
    return await env.client.post(
        f"/v1/referrals/{referral_id}/information-requests/{request_id}/answer",
        json=body,
        headers=env.auth(kind, who),
    )


async def view(env: Env, referral_id: str) -> dict[str, Any]:
    response = await env.client.get(f"/v1/referrals/{referral_id}", headers=env.auth())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def field_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [error["field"] for error in response.json()["detail"]]


# --------------------------------------------------------------------------- recording


async def test_a_request_is_recorded_with_its_due_date_and_shown_on_the_referral(
    env: Env,
) -> None:
    referral_id = await referral(env, 1)
    requested_at = athens_now(-1)
    response = await ask(env, referral_id, requested_at, "in_person")
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == KEYS
    expected_due = REGISTRY.information_due(
        "KK-KOZANI", athens_date(datetime.fromisoformat(requested_at))
    )
    assert created["referral_id"] == referral_id
    assert created["channel"] == "in_person"
    assert created["due"] == expected_due.isoformat()
    assert created["answered_at"] is None
    assert created["overdue"] is False
    assert datetime.fromisoformat(created["requested_at"]) == datetime.fromisoformat(requested_at)

    shown = await view(env, referral_id)
    assert shown["information_requests"] == [created]
    assert shown["overdue"] is False
    [entry] = [t for t in shown["timeline"] if t["kind"] == "information_requested"]
    assert entry["detail"] == f"{created['id']}: in_person, due {created['due']}"


async def test_an_open_request_past_its_due_day_makes_the_referral_overdue_until_answered(
    env: Env,
) -> None:
    referral_id = await referral(env, 2)
    # Asked on paper long before the referral was submitted: accepted.
    old = await ask(env, referral_id, "2026-01-05T10:00:00+02:00", "letter")
    assert old.status_code == 201, old.text
    request = old.json()
    # Mon 5 Jan; Epiphany Tue 6; 7 (1) ... Tue 20 Jan (10).
    assert request["due"] == "2026-01-20"
    assert request["overdue"] is True
    shown = await view(env, referral_id)
    assert shown["overdue"] is True
    # The agencies' deadline is another matter: it does not make the referral overdue.
    assert all(a["due"] == shown["due"] for a in shown["agencies"])

    late = await answer(env, referral_id, request["id"], {"answered_at": athens_now()})
    assert late.status_code == 200, late.text
    assert late.json()["answered_at"] is not None
    assert late.json()["overdue"] is True  # answered, but not by the end of its due day
    shown = await view(env, referral_id)
    assert shown["overdue"] is False  # nothing open
    assert shown["information_requests"] == [late.json()]
    [entry] = [t for t in shown["timeline"] if t["kind"] == "information_answered"]
    assert entry["detail"] == f"{request['id']}: late"
    assert env.metrics.information_requests.labels("answered_late")._value.get() == 1


async def test_an_answer_on_time_and_a_second_answer(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    referral_id = await referral(env, 3)
    request = (await ask(env, referral_id, athens_now(-30))).json()
    answered_at = athens_now(-1)
    first = await answer(
        env, referral_id, request["id"], {"answered_at": answered_at, "summary": SUMMARY}
    )
    assert first.status_code == 200, first.text
    assert set(first.json()) == KEYS
    assert first.json()["overdue"] is False
    assert datetime.fromisoformat(first.json()["answered_at"]) == datetime.fromisoformat(
        answered_at
    )
    again = await answer(env, referral_id, request["id"], {"answered_at": athens_now()})
    assert again.status_code == 409
    assert again.json()["current"] == first.json()
    # The summary is kept, and shown or logged nowhere.
    async with env.db.sessions() as session:
        row = await session.get(InformationRequestRow, request["id"])
        timeline = (await session.execute(select(TimelineRow.detail))).scalars().all()
    assert row is not None and row.summary == SUMMARY
    shown = json.dumps(await view(env, referral_id), ensure_ascii=False)
    listed = (await env.client.get("/v1/information-requests", headers=env.auth())).text
    captured = capsys.readouterr()
    for text in (first.text, again.text, shown, listed, *map(str, timeline), *captured):
        assert "Παπαδοπούλου" not in text
    assert env.metrics.information_requests.labels("answered_on_time")._value.get() == 1


# --------------------------------------------------------------------------- bad input


async def test_bad_input_names_the_field_and_stores_nothing(env: Env) -> None:
    referral_id = await referral(env, 4)
    assert field_of(await ask(env, referral_id, athens_now(10))) == ["requested_at"]  # future
    assert field_of(await ask(env, referral_id, "2026-11-03T00:30:00")) == ["requested_at"]
    assert field_of(await ask(env, referral_id, athens_now(), "carrier_pigeon")) == ["channel"]
    assert field_of(await ask(env, referral_id, "2019-12-31T12:00:00+02:00")) == ["requested_at"]
    assert field_of(await ask(env, referral_id, "yesterday")) == ["requested_at"]
    missing = await env.client.post(
        f"/v1/referrals/{referral_id}/information-requests",
        json={"channel": "phone"},
        headers=env.auth(),
    )
    assert field_of(missing) == ["requested_at"]
    assert await env.count(InformationRequestRow) == 0
    # A clock a little fast is tolerated.
    assert (await ask(env, referral_id, athens_now(2))).status_code == 201

    request = (await ask(env, referral_id, athens_now(-60))).json()
    before = await answer(env, referral_id, request["id"], {"answered_at": athens_now(-61)})
    assert field_of(before) == ["answered_at"]
    naive = await answer(env, referral_id, request["id"], {"answered_at": "2026-11-29T10:00:00"})
    assert field_of(naive) == ["answered_at"]
    future = await answer(env, referral_id, request["id"], {"answered_at": athens_now(10)})
    assert field_of(future) == ["answered_at"]
    too_long = await answer(
        env, referral_id, request["id"], {"answered_at": athens_now(), "summary": "x" * 2001}
    )
    assert field_of(too_long) == ["summary"]
    assert "x" * 50 not in too_long.text  # no echo
    async with env.db.sessions() as session:
        row = await session.get(InformationRequestRow, request["id"])
    assert row is not None and row.answered_at is None and row.summary is None
    fits = await answer(
        env, referral_id, request["id"], {"answered_at": athens_now(), "summary": "x" * 2000}
    )
    assert fits.status_code == 200, fits.text


async def test_only_the_owning_centre_records_and_answers(env: Env) -> None:
    referral_id = await referral(env, 5)
    request = (await ask(env, referral_id, athens_now())).json()
    body = {"answered_at": athens_now()}
    for kind, who in (("centres", "KK-GREVENA"), ("agencies", "dypa"), ("operators", "operator")):
        assert (await ask(env, referral_id, athens_now(), who=who, kind=kind)).status_code == 403
        refused = await answer(env, referral_id, request["id"], body, who=who, kind=kind)
        assert refused.status_code == 403
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (await ask(env, unknown, athens_now())).status_code == 404
    assert (await answer(env, unknown, request["id"], body)).status_code == 404
    assert (await answer(env, referral_id, unknown, body)).status_code == 404
    other_referral = await referral(env, 6)
    assert (await answer(env, other_referral, request["id"], body)).status_code == 404
    no_token = await env.client.post(
        f"/v1/referrals/{referral_id}/information-requests",
        json={"requested_at": athens_now(), "channel": "phone"},
    )
    assert no_token.status_code == 401
    assert await env.count(InformationRequestRow) == 1


# --------------------------------------------------------------------------- the calendar alone


async def due_of(
    env: Env, requested_at: str, centre: str = "KK-KOZANI", kind: str = "centres", who: str = ""
) -> httpx.Response:
    return await env.client.get(
        f"/v1/centres/{centre}/information-due",
        params={"requested_at": requested_at},
        headers=env.auth(kind, who or centre),
    )


async def test_the_calendar_answers_without_recording_anything(env: Env) -> None:
    at_desk = await due_of(env, "2026-11-03T00:30:00+02:00")  # Tuesday in Athens
    assert at_desk.status_code == 200, at_desk.text
    assert at_desk.json() == {
        "centre": "KK-KOZANI",
        "requested_at": "2026-11-03T00:30:00+02:00",
        "due": "2026-11-17",
    }
    as_operator = await due_of(env, "2026-11-02T10:00:00Z", "KK-KASTORIA", "operators", "operator")
    assert as_operator.json()["due"] == "2026-11-17"  # Saint Minas, 11 November
    assert (await due_of(env, "2020-01-01T00:00:00+02:00")).json()["due"] == "2020-01-16"
    assert (await due_of(env, "2035-12-31T23:59:00+02:00")).json()["due"] == "2036-01-15"
    assert (await due_of(env, "2030-06-03T09:00:00+03:00")).status_code == 200  # the future
    assert await env.count(InformationRequestRow) == 0


async def test_the_calendar_refuses_what_it_cannot_answer(env: Env) -> None:
    for outside in ("2019-12-31T23:59:00+02:00", "2036-01-01T00:00:00+02:00", "2026-11-03"):
        response = await due_of(env, outside)
        assert field_of(response) == ["requested_at"], outside
        assert response.json()["detail"][0]["loc"] == ["query", "requested_at"]
    assert field_of(await due_of(env, "2026-11-03T00:30:00")) == ["requested_at"]  # naive
    # An unencoded "+" arrives as a space: refused, not misread.
    raw = await env.client.get(
        "/v1/centres/KK-KOZANI/information-due?requested_at=2026-11-03T00:30:00+02:00",
        headers=env.auth(),
    )
    assert field_of(raw) == ["requested_at"]
    missing = await env.client.get("/v1/centres/KK-KOZANI/information-due", headers=env.auth())
    assert field_of(missing) == ["requested_at"]
    other_centre = await due_of(env, athens_now(), "KK-KOZANI", "centres", "KK-GREVENA")
    assert other_centre.status_code == 403
    assert (await due_of(env, athens_now(), "KK-KOZANI", "agencies", "dypa")).status_code == 403
    unknown = await due_of(env, athens_now(), "KK-NOWHERE", "operators", "operator")
    assert unknown.status_code == 404


# --------------------------------------------------------------------------- listing


async def page(env: Env, kind: str = "centres", who: str = "KK-KOZANI", **query: Any) -> Any:
    response = await env.client.get(
        "/v1/information-requests", params=query, headers=env.auth(kind, who)
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_pages_are_newest_first_and_stable_under_inserts(env: Env) -> None:
    referral_id = await referral(env, 7)
    base = datetime.now(UTC) - timedelta(days=3)
    made = []
    for n in range(5):
        at = iso(base + timedelta(hours=n))
        made.append((await ask(env, referral_id, at)).json()["id"])
    twin = (await ask(env, referral_id, iso(base + timedelta(hours=2)))).json()["id"]
    # Newest first; the two made at the same time by id, highest first.
    tied = sorted([made[2], twin], reverse=True)
    expected = [made[4], made[3], *tied, made[1], made[0]]

    first = await page(env, limit=2)
    assert [r["id"] for r in first["items"]] == expected[:2]
    assert first["next_cursor"]
    newest = (await ask(env, referral_id, athens_now())).json()["id"]  # arrives meanwhile
    seen = [r["id"] for r in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        following = await page(env, limit=2, cursor=cursor)
        seen += [r["id"] for r in following["items"]]
        cursor = following["next_cursor"]
    assert seen == expected  # nothing repeated, nothing skipped, the newcomer not mixed in
    everything = await page(env, limit=200)
    assert [r["id"] for r in everything["items"]] == [newest, *expected]
    assert everything["next_cursor"] is None
    assert len((await page(env))["items"]) == 7  # default limit 50


async def test_a_centre_sees_its_own_an_operator_all_an_agency_none(env: Env) -> None:
    kozani = await referral(env, 8)
    grevena = await referral(env, 9, "KK-GREVENA")
    mine = (await ask(env, kozani, athens_now(-5))).json()
    theirs = (await ask(env, grevena, athens_now(-4), who="KK-GREVENA")).json()

    assert [r["id"] for r in (await page(env))["items"]] == [mine["id"]]
    own = await page(env, centre="KK-KOZANI")
    assert [r["id"] for r in own["items"]] == [mine["id"]]
    other = await env.client.get(
        "/v1/information-requests", params={"centre": "KK-GREVENA"}, headers=env.auth()
    )
    assert other.status_code == 403
    everyone = await page(env, "operators", "operator")
    assert [r["id"] for r in everyone["items"]] == [theirs["id"], mine["id"]]
    one = await page(env, "operators", "operator", centre="KK-GREVENA")
    assert [r["id"] for r in one["items"]] == [theirs["id"]]
    unknown = await env.client.get(
        "/v1/information-requests",
        params={"centre": "KK-NOWHERE"},
        headers=env.auth("operators", "operator"),
    )
    assert field_of(unknown) == ["centre"]
    agency = await env.client.get("/v1/information-requests", headers=env.auth("agencies", "dypa"))
    assert agency.status_code == 403


async def test_the_overdue_filter_and_the_gauge(env: Env) -> None:
    referral_id = await referral(env, 10)
    open_late = (await ask(env, referral_id, "2026-01-05T10:00:00+02:00")).json()
    answered_late = (await ask(env, referral_id, "2026-02-02T10:00:00+02:00")).json()
    await answer(env, referral_id, answered_late["id"], {"answered_at": athens_now()})
    on_time = (await ask(env, referral_id, "2026-03-02T10:00:00+02:00")).json()
    await answer(env, referral_id, on_time["id"], {"answered_at": "2026-03-03T10:00:00+02:00"})
    fresh = (await ask(env, referral_id, athens_now(-1))).json()

    overdue = await page(env, overdue="true")
    assert [r["id"] for r in overdue["items"]] == [answered_late["id"], open_late["id"]]
    assert all(r["overdue"] for r in overdue["items"])
    not_overdue = await page(env, overdue="false")
    assert [r["id"] for r in not_overdue["items"]] == [fresh["id"], on_time["id"]]

    metrics = (await env.client.get("/metrics")).text
    assert 'diasyndesi_information_requests_overdue{centre="KK-KOZANI"} 1.0' in metrics
    assert 'diasyndesi_information_requests_overdue{centre="KK-GREVENA"} 0.0' in metrics
    assert 'diasyndesi_information_requests_total{event="recorded"} 4.0' in metrics


async def test_a_cursor_or_limit_the_hub_did_not_issue_is_refused(env: Env) -> None:
    forged = base64.urlsafe_b64encode(b'{"t": "2026-11-01T00:00:00", "id": "x"}').decode()
    for cursor in ("not-a-cursor", "%%%", forged, base64.urlsafe_b64encode(b"[]").decode()):
        response = await env.client.get(
            "/v1/information-requests", params={"cursor": cursor}, headers=env.auth()
        )
        assert field_of(response) == ["cursor"], cursor
    for limit in ("0", "201", "many"):
        response = await env.client.get(
            "/v1/information-requests", params={"limit": limit}, headers=env.auth()
        )
        assert field_of(response) == ["limit"], limit
    assert (await page(env, limit=200))["items"] == []


async def test_two_answers_at_once_one_wins(env: Env) -> None:
    referral_id = await referral(env, 12)
    request = (await ask(env, referral_id, athens_now(-10))).json()
    results = await asyncio.gather(
        *(answer(env, referral_id, request["id"], {"answered_at": athens_now(-n)}) for n in (1, 2))
    )
    assert sorted(r.status_code for r in results) == [200, 409]
    [won] = [r.json() for r in results if r.status_code == 200]
    [lost] = [r.json() for r in results if r.status_code == 409]
    assert lost["current"] == won
    async with env.db.sessions() as session:
        kinds = (await session.execute(select(TimelineRow.kind))).scalars().all()
    assert kinds.count("information_answered") == 1
