"""Canonical models: the contract example, identifier checks, privacy of errors, schema export."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from stdnum import luhn
from stdnum.gr import vat

from hub.settings import packaged_dir
from schemas import (
    EVENT_MODELS,
    EVENT_TOPICS,
    SPECIAL_CATEGORY_VULNERABILITIES,
    AgencyStatusUpdate,
    DeliveryOutcome,
    ProgrammeCode,
    Referral,
    ReferralRequest,
    ReferralSubmitted,
    Vulnerability,
    export_json_schemas,
    stale_json_schemas,
)
from schemas.export import DEFAULT_OUT_DIR, render_json_schemas

REPO = Path(__file__).resolve().parents[2]
REGISTRY = packaged_dir("registry")
REFERRAL_ID = "0b7f9a4e-3c1d-4e2a-9f6b-2d8c5e1a7b90"


def make_amka(ddmmyy: str, serial: str = "1234") -> str:
    """A valid AMKA: birth date DDMMYY, a 4-digit serial, then the Luhn check digit."""
    body = ddmmyy + serial
    return body + str(luhn.calc_check_digit(body))


def make_afm(body: str = "09409436") -> str:
    """A valid AFM: 8 digits and stdnum's weighted mod-11 check digit."""
    return body + str(vat.calc_check_digit(body))


def flip_last_digit(number: str) -> str:
    return number[:-1] + str((int(number[-1]) + 1) % 10)


AMKA_1980 = make_amka("010180")


def example_body() -> dict[str, Any]:
    """The README's referral contract body, with a valid AMKA and AFM filled in."""
    return {
        "centre": "KK-KOZANI",
        "caseworker": "sw-014",
        "beneficiary": {
            "identifier": {"type": "AMKA", "value": AMKA_1980},
            "afm": make_afm(),
            "given_name": "Μαρία",
            "family_name": "Παπαδοπούλου",
            "birth_date": "1980-01-01",
            "gender": "female",
            "phone": "+302461000000",
            "email": "maria@example.org",
            "address": {
                "street": "Δημοκρατίας 1",
                "postal_code": "50100",
                "municipality": "kozani",
            },
            "household_size": 3,
            "vulnerabilities": ["long_term_unemployed"],
        },
        "consent": {
            "given_at": "2026-11-20T09:30:00+02:00",
            "scope": "routed_agencies",
            "document_ref": "KK-KOZANI/2026/1234",
        },
        "programmes": ["GMI", "UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY", "HELP_AT_HOME"],
        "notes": "free text",
    }


def with_change(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = example_body()
    change(body)
    return body


def test_design_example_parses() -> None:
    req = ReferralRequest.model_validate(example_body())
    assert req.beneficiary.identifier.value == AMKA_1980
    assert req.beneficiary.birth_date.isoformat() == "1980-01-01"
    assert req.programmes[0] is ProgrammeCode.GMI
    assert req.beneficiary.vulnerabilities == [Vulnerability.LONG_TERM_UNEMPLOYED]


def test_design_example_without_optional_afm_parses() -> None:
    body = with_change(lambda b: b["beneficiary"].pop("afm"))
    assert ReferralRequest.model_validate(body).beneficiary.afm is None


def test_paaypa_identifier_skips_amka_checks() -> None:
    def change(b: dict[str, Any]) -> None:
        b["beneficiary"]["identifier"] = {"type": "PAAYPA", "value": "99-ABC-123"}
        b["beneficiary"]["birth_date"] = "1990-06-15"

    req = ReferralRequest.model_validate(with_change(change))
    assert req.beneficiary.identifier.value == "99-ABC-123"


def _set_beneficiary(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: b["beneficiary"].__setitem__(key, value)


def _set_amka(value: str) -> Callable[[dict[str, Any]], None]:
    return lambda b: b["beneficiary"]["identifier"].__setitem__("value", value)


# (case id, change, submitted value that must never be echoed, error location, message fragment)
INVALID_CASES = [
    (
        "amka-checksum",
        _set_amka(flip_last_digit(AMKA_1980)),
        flip_last_digit(AMKA_1980),
        ("beneficiary", "identifier", "value"),
        "AMKA check digit is invalid",
    ),
    (
        "amka-length",
        _set_amka(AMKA_1980[:-1]),
        AMKA_1980[:-1],
        ("beneficiary", "identifier", "value"),
        "AMKA must be exactly 11 digits",
    ),
    (
        "amka-format",
        _set_amka("0101801234X"),
        "0101801234X",
        ("beneficiary", "identifier", "value"),
        "AMKA must contain only digits",
    ),
    (
        "amka-birth-date-mismatch",
        _set_amka(make_amka("020180")),
        make_amka("020180"),
        ("beneficiary",),
        "AMKA does not agree with birth_date",
    ),
    (
        "afm-checksum",
        _set_beneficiary("afm", flip_last_digit(make_afm())),
        flip_last_digit(make_afm()),
        ("beneficiary", "afm"),
        "AFM check digit is invalid",
    ),
    (
        "unknown-top-level-field",
        lambda b: b.__setitem__("nickname", "Μαρούλα"),
        "Μαρούλα",
        ("nickname",),
        "Extra inputs are not permitted",
    ),
    (
        "unknown-nested-field",
        _set_beneficiary("mother_name", "Ελένη"),
        "Ελένη",
        ("beneficiary", "mother_name"),
        "Extra inputs are not permitted",
    ),
    (
        "unknown-programme",
        lambda b: b["programmes"].append("NOT_A_PROGRAMME"),
        "NOT_A_PROGRAMME",
        ("programmes", 4),
        "Input should be",
    ),
    (
        "duplicate-programmes",
        lambda b: b["programmes"].append("HELP_AT_HOME"),
        "HELP_AT_HOME",
        ("programmes",),
        "programmes must not repeat a code",
    ),
    (
        "name-too-long",
        _set_beneficiary("family_name", "Παπαδοπούλου" * 10),
        "Παπαδοπούλου" * 10,
        ("beneficiary", "family_name"),
        "at most 100 characters",
    ),
]


@pytest.mark.parametrize(
    ("change", "secret", "loc", "message"),
    [case[1:] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_invalid_input_is_rejected_at_a_precise_location(
    change: Callable[[dict[str, Any]], None], secret: str, loc: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ReferralRequest.model_validate(with_change(change))
    errors = caught.value.errors(include_input=False)
    assert len(errors) == 1
    assert errors[0]["loc"] == loc
    assert message in errors[0]["msg"]


@pytest.mark.parametrize(
    ("change", "secret"),
    [case[1:3] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_errors_never_echo_the_submitted_value(
    change: Callable[[dict[str, Any]], None], secret: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ReferralRequest.model_validate(with_change(change))
    exc = caught.value
    assert secret not in str(exc)
    errors = exc.errors(include_input=False)
    assert all(secret not in err["msg"] for err in errors)
    assert secret not in json.dumps(errors, default=str, ensure_ascii=False)
    # Not vacuous: the value did reach the validator, and pydantic's default errors() (as used by
    # FastAPI's 422 answer) still carries it, so renderers must pass include_input=False.
    assert secret in json.dumps(exc.errors(), default=str, ensure_ascii=False)


def test_birth_date_and_consent_must_not_be_in_the_future() -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    def change(b: dict[str, Any]) -> None:
        b["beneficiary"]["identifier"] = {"type": "OTHER", "value": "X1"}
        b["beneficiary"]["birth_date"] = tomorrow
        b["consent"]["given_at"] = later

    with pytest.raises(ValidationError) as caught:
        ReferralRequest.model_validate(with_change(change))
    locs = {err["loc"] for err in caught.value.errors()}
    assert locs == {("beneficiary", "birth_date"), ("consent", "given_at")}


def test_consent_time_must_carry_a_timezone() -> None:
    body = with_change(lambda b: b["consent"].__setitem__("given_at", "2026-11-20T09:30:00"))
    with pytest.raises(ValidationError) as caught:
        ReferralRequest.model_validate(body)
    assert caught.value.errors()[0]["type"] == "timezone_aware"


def make_referral() -> Referral:
    return Referral.model_validate(
        {
            **example_body(),
            "id": REFERRAL_ID,
            "created_at": "2026-11-20T09:31:00+02:00",
            "municipality": "kozani",
            "routed": ["opeka", "dypa", "kozani-social-grocery", "kozani-social-service"],
        }
    )


def test_referral_round_trips_through_json_as_carried_on_kafka() -> None:
    event = ReferralSubmitted(referral=make_referral())
    again = ReferralSubmitted.model_validate_json(event.model_dump_json())
    assert again == event
    assert again.referral.routed[2] == "kozani-social-grocery"


def test_referral_requires_hub_fields_and_is_immutable() -> None:
    with pytest.raises(ValidationError) as caught:
        Referral.model_validate(example_body())
    missing = {err["loc"][0] for err in caught.value.errors() if err["type"] == "missing"}
    assert missing == {"id", "created_at", "municipality", "routed"}
    with pytest.raises(ValidationError):
        make_referral().notes = "changed"  # type: ignore[misc]


def test_delivery_outcome_error_fields_follow_success() -> None:
    common = {
        "referral_id": REFERRAL_ID,
        "agency": "opeka",
        "attempts": 2,
        "occurred_at": "2026-11-20T09:32:00Z",
        "submitted_event_id": "evt-1",
    }
    ok = DeliveryOutcome.model_validate({**common, "succeeded": True, "reference": "ΑΠ-1"})
    assert ok.event_type == "gr.kk.delivery.succeeded.v1"
    failed = DeliveryOutcome.model_validate(
        {**common, "succeeded": False, "error_class": "Timeout"}
    )
    assert failed.event_type == "gr.kk.delivery.failed.v1"
    with pytest.raises(ValidationError, match="must carry error_class"):
        DeliveryOutcome.model_validate({**common, "succeeded": False})


def test_agency_status_update_rejects_unknown_fields_and_statuses() -> None:
    body = {"referral_id": REFERRAL_ID, "status": "accepted", "occurred_at": "2026-11-20T10:00Z"}
    assert AgencyStatusUpdate.model_validate(body).status == "accepted"
    with pytest.raises(ValidationError, match="Extra inputs"):
        AgencyStatusUpdate.model_validate({**body, "amka": AMKA_1980})
    with pytest.raises(ValidationError):
        AgencyStatusUpdate.model_validate({**body, "status": "approved"})


def test_every_event_type_has_a_model_and_a_topic() -> None:
    assert set(EVENT_MODELS) == set(EVENT_TOPICS)
    assert EVENT_TOPICS["gr.kk.enrollment.status_changed.v1"] == "kk.status.v1"
    assert EVENT_MODELS["gr.kk.delivery.failed.v1"] is DeliveryOutcome


def test_special_categories_are_vulnerabilities() -> None:
    assert SPECIAL_CATEGORY_VULNERABILITIES < set(Vulnerability)
    assert Vulnerability.MENTAL_HEALTH in SPECIAL_CATEGORY_VULNERABILITIES
    assert Vulnerability.LOW_INCOME not in SPECIAL_CATEGORY_VULNERABILITIES


def test_programme_registry_covers_every_code_once() -> None:
    entries = yaml.safe_load((REGISTRY / "programmes.yaml").read_text(encoding="utf-8"))
    codes = [entry["code"] for entry in entries]
    assert sorted(codes) == sorted(code.value for code in ProgrammeCode)
    families = {entry["code"]: entry["family"] for entry in entries}
    assert families["GMI"] == "benefits_agency"
    assert families["FEAD_FOOD_AID"] == "social_grocery"
    assert families["DISABILITY_DAY_CARE"] == "municipal_social_service"
    assert set(families.values()) == {
        "benefits_agency",
        "employment_service",
        "social_grocery",
        "municipal_social_service",
        "lifelong_learning",
    }
    assert all(entry["name_el"] and entry["name_en"] for entry in entries)


def test_export_writes_valid_schemas_and_detects_drift(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    assert [p.name for p in written] == list(render_json_schemas())
    assert "referral-request.schema.json" in {p.name for p in written}
    assert stale_json_schemas(tmp_path) == []

    doc = json.loads((tmp_path / "referral-request.schema.json").read_text(encoding="utf-8"))
    assert doc["title"] == "ReferralRequest"
    assert doc["$id"].endswith("/referral-request.schema.json")
    jsonschema.Draft202012Validator.check_schema(doc)
    jsonschema.validate(example_body(), doc)

    tampered = tmp_path / "status-changed.schema.json"
    tampered.write_text(tampered.read_text(encoding="utf-8").replace("agency", "agent"))
    (tmp_path / "delivery-outcome.schema.json").unlink()
    (tmp_path / "old-model.schema.json").write_text("{}\n")
    assert stale_json_schemas(tmp_path) == [
        "delivery-outcome.schema.json",
        "old-model.schema.json",
        "status-changed.schema.json",
    ]


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path / "b")}
    assert first == second
    assert all(text.endswith(b"}\n") for text in first.values())


def test_checked_in_json_schemas_are_up_to_date() -> None:
    assert DEFAULT_OUT_DIR == REPO / "schemas" / "json"
    assert stale_json_schemas(DEFAULT_OUT_DIR) == [], "run `diasyndesi schemas export`"
