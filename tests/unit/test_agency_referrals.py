"""Referrals between agencies (docs/decisions/0021), through the real app over a real
database: an agency refers a person to the centre responsible for them; the hub records the
agency as ``origin``, routes as usual but never back to it, and the centre, the originating
agency and the routed agencies each see what they should. Also routing by the beneficiary's
municipality of residence, for centres' referrals as for agencies'.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from sqlalchemy import select

from hub.db import DeliveryRow, OutboxRow, ReferralRow, TimelineRow
from hub.samples import sample_referral
from schemas.codes import EnrollmentStatus
from tests.unit.test_caseload import Caseload, cl, fields

__all__ = ["cl"]  # the fixture, imported for pytest

THREE = ["UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY", "HELP_AT_HOME"]
"""What ΟΠΕΚΑ refers a Kozani resident for: ΔΥΠΑ, the grocery and the social service."""


async def refer(
    cl: Caseload,
    agency: str,
    body: dict[str, Any],
    key: str = "a-1",
    kind: str = "agencies",
) -> httpx.Response:
    headers = {**cl.auth(kind, agency), "Idempotency-Key": key}
    return await cl.client.post("/v1/referrals", json=body, headers=headers)


def person(
    programmes: list[str] | None = None,
    *,
    centre: str = "KK-KOZANI",
    seed: int = 7,
    municipality: str = "kozani",
) -> dict[str, Any]:
    body = sample_referral(centre, programmes, seed=seed, municipality=municipality)
    body["caseworker"] = "opeka-officer-3"
    return body


async def get(cl: Caseload, referral_id: str, kind: str, who: str) -> httpx.Response:
    return await cl.client.get(f"/v1/referrals/{referral_id}", headers=cl.auth(kind, who))


async def test_an_agency_refers_a_person_and_is_never_routed_to_itself(cl: Caseload) -> None:
    response = await refer(cl, "opeka", person(THREE))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["routed"] == ["dypa", "kozani-social-grocery", "kozani-social-service"]
    assert answer["municipality"] == "kozani"
    referral_id = answer["id"]
    async with cl.db.sessions() as session:
        row = await session.get(ReferralRow, referral_id)
        assert row is not None
        assert (row.centre, row.origin, row.caseworker) == ("KK-KOZANI", "opeka", "opeka-officer-3")
        agencies = (
            await session.scalars(
                select(DeliveryRow.agency).where(DeliveryRow.referral_id == referral_id)
            )
        ).all()
        outbox = (await session.scalars(select(OutboxRow))).one()
        timeline = (await session.scalars(select(TimelineRow))).one()
    assert "opeka" not in agencies
    assert sorted(agencies) == sorted(answer["routed"])
    event = orjson.loads(outbox.value)
    assert event["referral"]["routed"] == answer["routed"]
    assert event["referral"]["centre"] == "KK-KOZANI"
    assert "opeka" not in (timeline.detail or "")


async def test_a_programme_only_the_referring_agency_serves_is_422_naming_it(
    cl: Caseload,
) -> None:
    """ΔΥΠΑ alone handles the default sample's programmes in Kozani; ΟΠΕΚΑ alone GMI."""
    alone = await refer(cl, "dypa", person())
    assert fields(alone) == ["programmes.0"]
    message = alone.json()["detail"][0]["msg"]
    assert "dypa" in message and "referring agency" in message
    second = await refer(cl, "opeka", person(["SOCIAL_GROCERY", "GMI"]), key="a-2")
    assert fields(second) == ["programmes.1"]
    # another agency may refer for it, and ΟΠΕΚΑ is its only taker then
    fine = await refer(cl, "dypa", person(["GMI"]), key="a-3")
    assert fine.status_code == 202, fine.text
    assert fine.json()["routed"] == ["opeka"]
    async with cl.db.sessions() as session:
        assert len((await session.scalars(select(ReferralRow.id))).all()) == 1


async def test_an_agency_naming_an_unknown_centre_is_422_and_an_operator_403(
    cl: Caseload,
) -> None:
    unknown = await refer(cl, "opeka", person(THREE, centre="KK-ATLANTIS"))
    assert fields(unknown) == ["centre"]
    operator = await refer(cl, "operator", person(THREE), kind="operators")
    assert operator.status_code == 403
    # an agency may refer to any centre the registry knows (it names the one responsible)
    eordaia = await refer(cl, "opeka", person(["JOB_COUNSELLING"], centre="KK-EORDAIA"))
    assert eordaia.status_code == 202, eordaia.text


async def test_the_centre_and_the_originating_agency_see_it_others_do_not(
    cl: Caseload,
) -> None:
    referral_id = (await refer(cl, "opeka", person(THREE))).json()["id"]
    mine = await cl.refer()  # the centre's own, routed to ΔΥΠΑ alone

    # The centre owns it: its caseload and GET, the whole view, with who referred.
    assert await cl.ids() == [mine, referral_id]
    assert await cl.ids(origin="opeka") == [referral_id]
    centre_view = (await get(cl, referral_id, "centres", "KK-KOZANI")).json()
    assert centre_view["origin"] == "opeka"
    assert centre_view["centre"] == "KK-KOZANI"
    assert len(centre_view["agencies"]) == 3

    # The originating agency: the whole view (every routed agency, the whole timeline).
    assert await cl.ids("agencies", "opeka") == [referral_id]
    assert await cl.ids("agencies", "opeka", origin="opeka") == [referral_id]
    own = await get(cl, referral_id, "agencies", "opeka")
    assert own.status_code == 200, own.text
    view = own.json()
    assert [a["agency"] for a in view["agencies"]] == [
        "dypa",
        "kozani-social-grocery",
        "kozani-social-service",
    ]
    assert [t["kind"] for t in view["timeline"]] == ["submitted"]
    assert view["information_requests"] == []  # between the person and the centre

    # A routed agency sees its own part only; one neither routed nor referring, nothing.
    routed = (await get(cl, referral_id, "agencies", "dypa")).json()
    assert [a["agency"] for a in routed["agencies"]] == ["dypa"]
    assert (await get(cl, referral_id, "agencies", "kozani-lifelong-learning")).status_code == 403
    assert await cl.ids("agencies", "kozani-lifelong-learning") == []
    assert (await get(cl, referral_id, "centres", "KK-EORDAIA")).status_code == 403
    assert await cl.ids("centres", "KK-EORDAIA") == []


async def test_the_originating_agency_follows_every_status_change(cl: Caseload) -> None:
    referral_id = (await refer(cl, "opeka", person(THREE))).json()["id"]
    before = (await get(cl, referral_id, "agencies", "opeka")).json()
    assert {a["agency"]: a["status"] for a in before["agencies"]} == {
        "dypa": None,
        "kozani-social-grocery": None,
        "kozani-social-service": None,
    }
    await cl.answer(referral_id, "dypa")
    await cl.answer(referral_id, "dypa", EnrollmentStatus.ACCEPTED)
    await cl.answer(referral_id, "kozani-social-grocery", EnrollmentStatus.REJECTED)

    after = (await get(cl, referral_id, "agencies", "opeka")).json()
    statuses = {a["agency"]: (a["delivery"], a["status"]) for a in after["agencies"]}
    assert statuses["dypa"] == ("delivered", "accepted")
    assert statuses["kozani-social-grocery"][1] == "rejected"
    assert await cl.ids("agencies", "opeka", origin="opeka", status="accepted") == [referral_id]
    assert await cl.ids("agencies", "opeka", agency="kozani-social-grocery", status="rejected") == [
        referral_id
    ]
    since = before["created_at"]
    assert await cl.ids("agencies", "opeka", origin="opeka", updated_since=since) == [referral_id]


async def test_the_originating_agency_withdraws_it_a_routed_one_may_not(cl: Caseload) -> None:
    referral_id = (await refer(cl, "opeka", person(THREE))).json()["id"]
    url = f"/v1/referrals/{referral_id}/withdraw"
    for who in ("dypa", "kozani-lifelong-learning"):
        refused = await cl.client.post(
            url, json={"reason": "error"}, headers=cl.auth("agencies", who)
        )
        assert refused.status_code == 403, who
    partly = await cl.client.post(
        url,
        json={"reason": "beneficiary_request", "programmes": ["SOCIAL_GROCERY"]},
        headers=cl.auth("agencies", "opeka"),
    )
    assert partly.status_code == 202, partly.text
    assert partly.json()["agencies"] == ["kozani-social-grocery"]
    state = await cl.client.get(
        f"/v1/referrals/{referral_id}/withdrawals", headers=cl.auth("agencies", "opeka")
    )
    assert state.status_code == 200
    assert state.json()["remaining_programmes"] == ["UNEMPLOYMENT_REGISTRATION", "HELP_AT_HOME"]
    # the centre owns it and may withdraw the rest
    rest = await cl.client.post(url, json={"reason": "consent_withdrawn"}, headers=cl.auth())
    assert rest.status_code == 202, rest.text
    assert rest.json()["agencies"] == ["dypa", "kozani-social-service"]


async def test_idempotency_keys_are_per_origin(cl: Caseload) -> None:
    """ΟΠΕΚΑ, ΔΥΠΑ and the centre each use key "k" for the same centre: three referrals.
    ΟΠΕΚΑ repeating its own is answered as before; with another body it is refused."""
    by_opeka = person(THREE, seed=21)
    opeka = await refer(cl, "opeka", by_opeka, key="k")
    dypa = await refer(cl, "dypa", person(["GMI"], seed=22), key="k")
    centre = await cl.submit(sample_referral(seed=23), key="k")
    assert opeka.status_code == dypa.status_code == centre.status_code == 202
    ids = {opeka.json()["id"], dypa.json()["id"], centre.json()["id"]}
    assert len(ids) == 3

    again = await refer(cl, "opeka", by_opeka, key="k")
    assert again.status_code == 202
    assert again.json() == opeka.json()
    reused = await refer(cl, "opeka", person(THREE, seed=24), key="k")
    assert reused.status_code == 422
    assert "Idempotency-Key" in reused.json()["detail"]
    async with cl.db.sessions() as session:
        origins = (await session.scalars(select(ReferralRow.origin))).all()
    assert sorted(origins) == ["KK-KOZANI", "dypa", "opeka"]


async def test_routing_follows_the_municipality_of_residence(cl: Caseload) -> None:
    """A Kozani centre's referral for a Karpenisi resident goes to Karpenisi's social
    service; a municipality the registry does not know falls back to the centre's, as does
    an address without one; an agency's referral is routed the same way."""
    karpenisi = await cl.submit(
        sample_referral(programmes=["HELP_AT_HOME"], seed=31, municipality="karpenisi"), key="r1"
    )
    assert karpenisi.status_code == 202, karpenisi.text
    assert karpenisi.json()["routed"] == ["karpenisi-social-service"]
    assert karpenisi.json()["municipality"] == "karpenisi"

    unknown = await cl.submit(
        sample_referral(programmes=["HELP_AT_HOME"], seed=32, municipality="atlantis"), key="r2"
    )
    assert unknown.status_code == 202, unknown.text
    assert unknown.json()["routed"] == ["kozani-social-service"]
    assert unknown.json()["municipality"] == "kozani"

    homeless = sample_referral(programmes=["HOMELESS_SHELTER"], seed=33, municipality="x")
    del homeless["beneficiary"]["address"]
    nowhere = await cl.submit(homeless, key="r3")
    assert nowhere.status_code == 202, nowhere.text
    assert nowhere.json()["routed"] == ["kozani-social-service"]

    # ΔΥΠΑ refers a Kozani resident to the Karpenisi centre (say, they moved): Kozani's
    # services take the social programmes.
    moved = person(["SOCIAL_GROCERY", "HELP_AT_HOME"], centre="KK-KARPENISI", seed=34)
    agency = await refer(cl, "dypa", moved)
    assert agency.status_code == 202, agency.text
    assert agency.json()["routed"] == ["kozani-social-grocery", "kozani-social-service"]
    async with cl.db.sessions() as session:
        stored = await session.get(ReferralRow, agency.json()["id"])
    assert stored is not None
    assert (stored.centre, stored.municipality) == ("KK-KARPENISI", "kozani")
