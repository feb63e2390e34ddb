"""One agency's failure is classified, counted and visible on the referral, and never
delays another agency; outside consumers can read the hub's records with the CloudEvents SDK."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from aiokafka import AIOKafkaConsumer
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

from hub.samples import sample_referral
from hub.settings import AgencyConnection
from schemas.events import REFERRAL_SUBMITTED, TOPIC_REFERRALS
from tests.integration.conftest import Stack, start_embedded

EVERYONE = ["GMI", "UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY", "HELP_AT_HOME"]


def by_agency(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["agency"]: a for a in view["agencies"]}


async def test_an_agency_that_is_down_delays_no_other(stack: Stack) -> None:
    await stack.faults("kozani-social-grocery", fail_rate=1.0, status=503)
    answer = await stack.submit(sample_referral(programmes=EVERYONE, seed=301))

    def others_done_grocery_retrying(view: dict[str, Any]) -> bool:
        agencies = by_agency(view)
        grocery = agencies.pop("kozani-social-grocery")
        return grocery["delivery"] == "retrying" and all(
            a["delivery"] == "delivered" for a in agencies.values()
        )

    [view] = await stack.wait_for([answer["id"]], others_done_grocery_retrying, timeout_s=30)
    grocery = by_agency(view)["kozani-social-grocery"]
    assert grocery["error_class"] == "http_503"
    assert grocery["attempts"] >= 3
    assert (await stack.sandbox("stats", "kozani-social-grocery"))["accepted"] == 0

    await stack.faults("kozani-social-grocery")  # the grocery is back
    [view] = await stack.wait_for(
        [answer["id"]],
        lambda v: by_agency(v)["kozani-social-grocery"]["delivery"] == "delivered",
        timeout_s=30,
    )
    assert by_agency(view)["kozani-social-grocery"]["error_class"] is None
    assert (await stack.sandbox("stats", "kozani-social-grocery"))["accepted"] == 1


async def test_a_permanent_refusal_is_dead_lettered_with_its_reason(stack: Stack) -> None:
    await stack.faults("kozani-social-service", fail_rate=1.0, status=400)
    answer = await stack.submit(sample_referral(programmes=EVERYONE, seed=302))

    def settled(view: dict[str, Any]) -> bool:
        return all(a["delivery"] in {"delivered", "dead_lettered"} for a in view["agencies"])

    [view] = await stack.wait_for([answer["id"]], settled, timeout_s=30)
    agencies = by_agency(view)
    municipal = agencies.pop("kozani-social-service")
    assert (municipal["delivery"], municipal["error_class"], municipal["attempts"]) == (
        "dead_lettered",
        "http_400",
        1,
    )
    assert all(a["delivery"] == "delivered" for a in agencies.values())
    async with stack.session.get(f"{stack.url}/metrics") as response:
        metrics = await response.text()
    assert (
        'diasyndesi_deliveries_total{connector="kozani-social-service",outcome="dead_lettered"} 1.0'
    ) in metrics

    # The operator sees the dead letter with its reason, and replays it once the cause is fixed.
    operator = {"Authorization": f"Bearer {stack.token('operators', 'operator')}"}
    async with stack.session.get(f"{stack.url}/v1/ops/dlq", headers=operator) as response:
        [letter] = await response.json()
    assert (letter["agency"], letter["error_class"], letter["permanent"]) == (
        "kozani-social-service",
        "http_400",
        True,
    )
    centre = {"Authorization": f"Bearer {stack.token()}"}
    async with stack.session.get(f"{stack.url}/v1/ops/dlq", headers=centre) as response:
        assert response.status == 403  # centres cannot see dead letters
    await stack.faults("kozani-social-service")
    replay_url = f"{stack.url}/v1/ops/dlq/{letter['id']}/replay"
    async with stack.session.post(replay_url, headers=operator) as response:
        assert response.status == 202, await response.text()
        assert (await response.json())["replayed_by"] == "operator"
    [view] = await stack.wait_for(
        [answer["id"]],
        lambda v: by_agency(v)["kozani-social-service"]["delivery"] == "delivered",
        timeout_s=30,
    )
    assert ("replayed", "kozani-social-service") in [
        (t["kind"], t["agency"]) for t in view["timeline"]
    ]
    received = await stack.sandbox("received", "kozani-social-service")
    assert [r["duplicate"] for r in received] == [False]  # the agency took it exactly once
    async with stack.session.post(replay_url, headers=operator) as response:
        assert response.status == 409  # already delivered: nothing left to replay


async def test_a_hostile_soap_answer_is_classified_and_harmless(stack: Stack) -> None:
    await stack.faults("opeka", path="malformed", mode="bomb")
    await stack.faults("opeka", malformed_rate=1.0)
    answer = await stack.submit(sample_referral(programmes=["GMI", "JOB_COUNSELLING"], seed=303))

    def opeka_retrying(view: dict[str, Any]) -> bool:
        agencies = by_agency(view)
        return agencies["opeka"]["delivery"] == "retrying" and (
            agencies["dypa"]["delivery"] == "delivered"
        )

    [view] = await stack.wait_for([answer["id"]], opeka_retrying, timeout_s=30)
    assert by_agency(view)["opeka"]["error_class"] == "unsafe_response"
    await stack.faults("opeka")
    await stack.wait_for(
        [answer["id"]], lambda v: by_agency(v)["opeka"]["delivery"] == "delivered", timeout_s=30
    )


async def test_outside_consumers_read_the_hub_records_with_the_cloudevents_sdk(
    stack: Stack,
) -> None:
    answer = await stack.submit(sample_referral(programmes=["JOB_COUNSELLING"], seed=304))
    consumer = AIOKafkaConsumer(
        TOPIC_REFERRALS,
        bootstrap_servers=stack.embedded.broker.bootstrap_servers,
        group_id=f"outside-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        found = None
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if record.key == answer["id"].encode():
                        found = record
            if found is not None:
                break
    finally:
        await consumer.stop()
    assert found is not None, "the referral never appeared on kk.referrals.v1"
    event = from_binary(
        KafkaMessage(headers=dict(found.headers), key=found.key, value=found.value), JSONFormat()
    )
    assert event.get_type() == REFERRAL_SUBMITTED
    assert event.get_subject() == answer["id"]
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["referral"]["id"] == answer["id"]
    assert data["referral"]["routed"] == ["dypa"]


async def test_a_certificate_problem_dead_letters_only_that_agency(tmp_path: Path) -> None:
    """The lifelong-learning centre's server certificate is not signed by the CA the hub
    trusts for it (a misconfigured CA file): its deliveries are dead-lettered at once as
    ``tls`` (nothing of the path in the reason), and every other agency is unaffected."""
    stranger = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    wrong_ca = {"kozani-lifelong-learning": AgencyConnection.model_validate({"ca_file": stranger})}
    embedded = await start_embedded(tmp_path / "stack", agencies=wrong_ca)
    try:
        async with aiohttp.ClientSession() as session:
            stack = Stack(embedded, session)
            body = sample_referral(programmes=[*EVERYONE, "ADULT_EDUCATION"], seed=303)
            answer = await stack.submit(body)

            def settled(view: dict[str, Any]) -> bool:
                return all(
                    a["delivery"] in {"delivered", "dead_lettered"} for a in view["agencies"]
                )

            [view] = await stack.wait_for([answer["id"]], settled, timeout_s=30)
            operator = {"Authorization": f"Bearer {stack.token('operators', 'operator')}"}
            async with session.get(f"{stack.url}/v1/ops/dlq", headers=operator) as response:
                [letter] = await response.json()
    finally:
        await embedded.stop()
    agencies = by_agency(view)
    learning = agencies.pop("kozani-lifelong-learning")
    assert (learning["delivery"], learning["error_class"], learning["attempts"]) == (
        "dead_lettered",
        "tls",
        1,
    )
    assert all(a["delivery"] == "delivered" for a in agencies.values())
    assert (letter["agency"], letter["error_class"], letter["permanent"]) == (
        "kozani-lifelong-learning",
        "tls",
        True,
    )
    assert str(stranger) not in json.dumps(letter)
