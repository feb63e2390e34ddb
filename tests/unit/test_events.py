"""CloudEvents envelope (hub/events.py): binary Kafka mode, readable by any CloudEvents
client, keyed by referral id, and poison records refused without echoing personal data."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

from hub.events import OutgoingRecord, PoisonRecord, decode, encode
from hub.samples import sample_referral
from schemas.events import (
    REFERRAL_SUBMITTED,
    TOPIC_REFERRALS,
    ReferralSubmitted,
    StatusChanged,
)
from schemas.referral import Referral

REFERRAL_ID = "00000000-0000-4000-8000-000000000001"
EVENT_ID = "11111111-2222-4333-8444-555555555555"
EVENT_TIME = datetime(2026, 11, 20, 9, 30, 5, tzinfo=UTC)


def fixed_referral() -> Referral:
    body = sample_referral(seed=1)
    body["consent"]["given_at"] = "2026-11-20T09:00:00+02:00"
    body["beneficiary"]["vulnerabilities"] = ["long_term_unemployed", "disability", "roma"]
    body["programmes"] = ["UNEMPLOYMENT_REGISTRATION", "JOB_COUNSELLING"]
    return Referral.model_validate(
        {
            **body,
            "id": REFERRAL_ID,
            "created_at": "2026-11-20T09:30:00+00:00",
            "municipality": "kozani",
            "routed": ["dypa"],
        }
    )


REFERRAL = fixed_referral()
AMKA = REFERRAL.beneficiary.identifier.value
DATA = ReferralSubmitted(referral=REFERRAL)


@pytest.fixture
def record() -> OutgoingRecord:
    return encode(
        TOPIC_REFERRALS,
        REFERRAL_SUBMITTED,
        DATA,
        key=REFERRAL.id,
        event_id=EVENT_ID,
        time=EVENT_TIME,
    )


def ce_headers(event_type: str = REFERRAL_SUBMITTED) -> list[tuple[str, bytes]]:
    return [
        ("ce_id", b"e-1"),
        ("ce_source", b"/diasyndesi/hub"),
        ("ce_specversion", b"1.0"),
        ("ce_type", event_type.encode()),
        ("content-type", b"application/json"),
    ]


# --------------------------------------------------------------------------- encoding


def test_encoded_record_carries_cloudevents_headers(record: OutgoingRecord) -> None:
    headers = dict(record.headers)
    assert len(headers) == len(record.headers)  # no header twice
    assert record.topic == "kk.referrals.v1"
    assert headers["ce_id"] == EVENT_ID.encode()
    assert headers["ce_type"] == b"gr.kk.referral.submitted.v1"
    assert headers["ce_source"] == b"/diasyndesi/hub"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_subject"] == REFERRAL_ID.encode()
    assert headers["content-type"] == b"application/json"
    assert datetime.fromisoformat(headers["ce_time"].decode()) == EVENT_TIME


def test_key_is_the_referral_id_and_no_header_carries_personal_data(
    record: OutgoingRecord,
) -> None:
    assert record.key == REFERRAL_ID.encode()
    personal = [
        AMKA,
        REFERRAL.beneficiary.afm,
        REFERRAL.beneficiary.given_name,
        REFERRAL.beneficiary.family_name,
    ]
    for secret in personal:
        assert secret is not None
        assert secret.encode() not in record.key
        for _, value in record.headers:
            assert secret.encode() not in value


def test_body_is_the_canonical_json_with_greek_unescaped(record: OutgoingRecord) -> None:
    assert json.loads(record.value) == DATA.model_dump(mode="json")
    assert REFERRAL.beneficiary.given_name.encode() in record.value  # UTF-8, not \u escapes


def test_event_id_is_fresh_when_not_given() -> None:
    first = encode(TOPIC_REFERRALS, REFERRAL_SUBMITTED, DATA, key=REFERRAL.id)
    second = encode(TOPIC_REFERRALS, REFERRAL_SUBMITTED, DATA, key=REFERRAL.id)
    assert dict(first.headers)["ce_id"] != dict(second.headers)["ce_id"]


# --------------------------------------------------------------------------- round trip


def test_decode_of_encode_gives_back_the_same_event(record: OutgoingRecord) -> None:
    event = decode(record.headers, record.key, record.value)
    assert event.id == EVENT_ID
    assert event.type == REFERRAL_SUBMITTED
    assert event.source == "/diasyndesi/hub"
    assert event.subject == REFERRAL_ID
    assert event.time == EVENT_TIME
    assert isinstance(event.data, ReferralSubmitted)
    assert event.data == DATA


def test_an_outside_cloudevents_client_reads_the_record(record: OutgoingRecord) -> None:
    message = KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    event = from_binary(message, JSONFormat())
    assert event.get_type() == "gr.kk.referral.submitted.v1"
    assert event.get_id() == EVENT_ID
    assert event.get_source() == "/diasyndesi/hub"
    assert event.get_specversion() == "1.0"
    assert event.get_data() == DATA.model_dump(mode="json")


# --------------------------------------------------------------------------- poison records


def test_record_without_ce_headers_is_poison(record: OutgoingRecord) -> None:
    with pytest.raises(PoisonRecord, match="ce_type"):
        decode([("content-type", b"application/json")], record.key, record.value)


def test_record_without_ce_source_is_poison(record: OutgoingRecord) -> None:
    headers = [(name, value) for name, value in record.headers if name != "ce_source"]
    with pytest.raises(PoisonRecord, match=r"lacks header.*ce_source"):
        decode(headers, record.key, record.value)


def test_record_without_ce_id_is_poison(record: OutgoingRecord) -> None:
    """The SDK would invent an id, giving each redelivery a new idempotency key."""
    headers = [(name, value) for name, value in record.headers if name != "ce_id"]
    with pytest.raises(PoisonRecord, match=r"lacks header.*ce_id"):
        decode(headers, record.key, record.value)


def test_unknown_event_type_is_poison(record: OutgoingRecord) -> None:
    with pytest.raises(
        PoisonRecord, match=r"unknown event type 'gr\.kk\.referral\.teleported\.v1'"
    ):
        decode(ce_headers("gr.kk.referral.teleported.v1"), record.key, record.value)


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b"null"])
def test_body_that_is_not_a_json_object_is_poison(body: bytes) -> None:
    with pytest.raises(PoisonRecord, match=r"gr\.kk\.referral\.submitted\.v1 data invalid"):
        decode(ce_headers(), REFERRAL_ID.encode(), body)


def test_schema_invalid_data_is_poison_without_echoing_personal_data() -> None:
    data = DATA.model_dump(mode="json")
    data["referral"]["beneficiary"]["identifier"]["value"] = AMKA[:-1] + "X"  # bad AMKA
    data["referral"]["beneficiary"]["given_name"] = ""  # too short
    data["referral"]["shoe_size"] = AMKA  # unknown field carrying the AMKA
    body = json.dumps(data, ensure_ascii=False).encode()
    with pytest.raises(PoisonRecord) as caught:
        decode(ce_headers(), REFERRAL_ID.encode(), body)
    message = str(caught.value)
    assert message == "gr.kk.referral.submitted.v1 data invalid: 3 error(s)"
    assert AMKA not in message
    assert AMKA[:-1] not in message
    assert caught.value.__cause__ is None  # the pydantic error (with inputs) is not chained


def test_data_of_another_type_is_poison() -> None:
    status = StatusChanged(
        referral_id=REFERRAL_ID, agency="dypa", status="received", occurred_at=EVENT_TIME
    )
    body = status.model_dump_json().encode()
    with pytest.raises(PoisonRecord, match="data invalid"):
        decode(ce_headers(REFERRAL_SUBMITTED), REFERRAL_ID.encode(), body)
