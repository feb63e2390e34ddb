"""Agency mappings (hub/mapping.py, mappings/dypa.yaml): golden output, data minimisation,
purity, and start-up validation that names the file and the field."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ConfigurationError
from hub.mapping import Mapping, load_mapping
from hub.samples import sample_referral
from hub.settings import packaged_dir
from schemas.codes import SPECIAL_CATEGORY_VULNERABILITIES
from schemas.referral import Referral

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = packaged_dir("mappings")
DYPA_MAPPING = MAPPINGS / "dypa.yaml"
GOLDEN = ROOT / "tests" / "golden" / "dypa.json"
REFERRAL_ID = "00000000-0000-4000-8000-000000000001"
HEAD = "agency: dypa\nversion: 1\n"  # start of a small mapping file written by a test


def fixed_referral(programmes: list[str] | None = None, **beneficiary: Any) -> Referral:
    """sample_referral(seed=1) with every time-dependent field pinned."""
    body = sample_referral(seed=1)
    body["consent"]["given_at"] = "2026-11-20T09:00:00+02:00"
    body["beneficiary"]["vulnerabilities"] = ["long_term_unemployed", "disability", "roma"]
    body["beneficiary"].update(beneficiary)
    body["programmes"] = programmes or ["UNEMPLOYMENT_REGISTRATION", "JOB_COUNSELLING"]
    return Referral.model_validate(
        {
            **body,
            "id": REFERRAL_ID,
            "created_at": "2026-11-20T09:30:00+00:00",
            "municipality": "kozani",
            "routed": ["dypa"],
        }
    )


@pytest.fixture(scope="module")
def dypa() -> Mapping:
    return load_mapping(DYPA_MAPPING, "dypa")


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value for every non-dict node (lists are leaves: one rule fills one)."""
    if isinstance(node, dict):
        found: dict[str, Any] = {}
        for key, child in node.items():
            found.update(leaves(child, f"{prefix}{key}."))
        return found
    return {prefix.rstrip("."): node}


# --------------------------------------------------------------------------- golden file


def test_dypa_payload_matches_golden_file(dypa: Mapping) -> None:
    payload = dypa.apply(fixed_referral().model_dump(mode="json"))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        text = json.dumps(payload, ensure_ascii=False, indent=2) + "\n"
        GOLDEN.write_text(text, encoding="utf-8")
    assert payload == json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_golden_file_has_the_agency_shape() -> None:
    """Guards the golden file itself against a careless UPDATE_GOLDEN=1."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert golden["hub_referral_id"] == REFERRAL_ID
    assert golden["jobseeker"]["birth_date"] == "10/01/1966"  # dd/mm/yyyy
    assert golden["jobseeker"]["id_type"] == "AMKA"
    assert golden["services"] == ["JOBSEEKER_REGISTRATION", "COUNSELLING"]
    assert golden["labour_market_flags"] == ["LONG_TERM_UNEMPLOYED"]  # no disability, no roma
    assert golden["source_system"] == "DIASYNDESI"
    assert "afm" not in json.dumps(golden).lower()


# --------------------------------------------------------------------------- minimisation


def minimisation_referral() -> Referral:
    return fixed_referral(
        ["UNEMPLOYMENT_REGISTRATION", "JOB_COUNSELLING", "GMI"],
        vulnerabilities=sorted(SPECIAL_CATEGORY_VULNERABILITIES),
    )


def test_dypa_payload_leaks_no_afm_notes_special_category_or_foreign_programme(
    dypa: Mapping,
) -> None:
    referral = minimisation_referral()
    assert referral.beneficiary.afm and referral.notes
    text = json.dumps(dypa.apply(referral.model_dump(mode="json")), ensure_ascii=False)
    assert referral.beneficiary.afm not in text
    assert referral.notes not in text
    assert referral.beneficiary.address is not None
    assert referral.beneficiary.address.street not in text
    assert referral.caseworker not in text
    for code in SPECIAL_CATEGORY_VULNERABILITIES:
        assert code.value not in text.lower()
        assert code.value.upper() not in text
    assert "GMI" not in text


def test_dypa_allow_list_excludes_sensitive_sources(dypa: Mapping) -> None:
    for path in ("beneficiary.afm", "notes", "caseworker", "beneficiary.address.street"):
        assert path not in dypa.allowed_sources
    for forbidden in ("beneficiary", "beneficiary.address", "consent"):  # whole subtrees
        assert forbidden not in dypa.allowed_sources
    flag_table = dypa.codes["labour_flags"]
    assert not {code.value for code in SPECIAL_CATEGORY_VULNERABILITIES} & set(flag_table)
    assert "GMI" not in dypa.codes["services"]


def test_every_output_leaf_comes_from_an_allowed_source_or_a_constant(dypa: Mapping) -> None:
    payload = dypa.apply(minimisation_referral().model_dump(mode="json"))
    rules = {rule.to: rule for rule in dypa.fields}
    out = leaves(payload)
    assert set(out) == set(rules)  # every rule wrote exactly one leaf, nothing else appeared
    assert out["labour_market_flags"] == []  # all special-category flags were dropped
    for path, value in out.items():
        rule = rules[path]  # KeyError: a leaf no rule wrote
        if rule.value is not None:
            assert value == rule.value
        else:
            assert rule.source in dypa.allowed_sources


# --------------------------------------------------------------------------- purity


def test_apply_does_not_mutate_its_input(dypa: Mapping) -> None:
    document = fixed_referral().model_dump(mode="json")
    before = copy.deepcopy(document)
    dypa.apply(document)
    assert document == before


def test_output_does_not_alias_the_input(tmp_path: Path) -> None:
    path = tmp_path / "dypa.yaml"
    path.write_text("agency: dypa\nversion: 1\nfields:\n  - {to: progs, from: programmes}\n")
    document = fixed_referral().model_dump(mode="json")
    payload = load_mapping(path, "dypa").apply(document)
    payload["progs"].append("X")
    assert document["programmes"] == ["UNEMPLOYMENT_REGISTRATION", "JOB_COUNSELLING"]


# --------------------------------------------------------------------------- required/optional


def test_required_field_missing_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "dypa.yaml"
    path.write_text(HEAD + "fields:\n  - {to: tax_id, from: beneficiary.afm, required: true}\n")
    document = fixed_referral(afm=None).model_dump(mode="json")
    with pytest.raises(ValueError, match=r"required field beneficiary\.afm missing"):
        load_mapping(path, "dypa").apply(document)


def test_optional_missing_source_is_omitted(dypa: Mapping) -> None:
    referral = fixed_referral(phone=None, email=None, address=None, gender=None)
    payload = dypa.apply(referral.model_dump(mode="json"))
    assert "contact" not in payload
    assert "gender" not in payload["jobseeker"]
    assert payload["jobseeker"]["id_number"] == referral.beneficiary.identifier.value


def test_unlisted_scalar_code_is_dropped(dypa: Mapping) -> None:
    payload = dypa.apply(fixed_referral(gender="other").model_dump(mode="json"))
    assert payload["jobseeker"]["gender"] == "X"
    document = fixed_referral().model_dump(mode="json")
    document["beneficiary"]["gender"] = "not-a-code"
    assert "gender" not in dypa.apply(document)["jobseeker"]


# --------------------------------------------------------------------------- bad mappings

BAD_MAPPINGS = {
    "unknown_path": (
        HEAD + "fields:\n  - {to: size, from: beneficiary.shoe_size}\n",
        ["fields.0", "beneficiary.shoe_size"],
    ),
    "undefined_code_list": (
        HEAD + "fields:\n  - {to: sex, from: beneficiary.gender, codes: sexes}\n",
        ["fields.0", "sexes", "not defined"],
    ),
    "from_and_value": (
        HEAD + "fields:\n  - {to: centre, from: centre, value: KK}\n",
        ["fields.0", "exactly one of 'from' or 'value'"],
    ),
    "neither_from_nor_value": (
        HEAD + "fields:\n  - {to: centre}\n",
        ["fields.0", "exactly one of 'from' or 'value'"],
    ),
    "wrong_agency": (
        "agency: opeka\nversion: 1\nfields: []\n",
        ["'opeka'", "expected 'dypa'"],
    ),
    "invalid_yaml": (
        HEAD + "fields:\n  - {to: centre, from: centre\n",
        ["not valid YAML"],
    ),
    "unknown_top_level_key": (
        HEAD + "fields: []\ncolour: red\n",
        ["colour", "Extra inputs are not permitted"],
    ),
    "unknown_rule_key": (
        HEAD + "fields:\n  - {to: centre, from: centre, transliterate: true}\n",
        ["fields.0.transliterate"],
    ),
    "bad_output_name": (
        HEAD + "fields:\n  - {to: 'bad name', from: centre}\n",
        ["fields.0.to"],
    ),
    "version_zero": (
        "agency: dypa\nversion: 0\nfields: []\n",
        ["version"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MAPPINGS))
def test_bad_mapping_stops_the_start_naming_file_and_field(tmp_path: Path, case: str) -> None:
    text, fragments = BAD_MAPPINGS[case]
    path = tmp_path / f"bad-{case}.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as caught:
        load_mapping(path, "dypa")
    message = str(caught.value)
    assert f"bad-{case}.yaml" in message
    for fragment in fragments:
        assert fragment in message


def test_missing_mapping_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"absent\.yaml: cannot read mapping"):
        load_mapping(tmp_path / "absent.yaml", "dypa")


def test_a_whole_section_cannot_be_copied_out(tmp_path: Path) -> None:
    """``from: beneficiary`` would send AFM and special-category flags along with it."""
    path = tmp_path / "leaky.yaml"
    path.write_text(
        "agency: dypa\nversion: 1\nfields:\n  - {to: person, from: beneficiary}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match=r"leaky\.yaml.*'beneficiary' is not a canonical"):
        load_mapping(path, "dypa")


def test_code_lists_may_only_use_canonical_codes(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        "agency: dypa\nversion: 1\nfields:\n  - {to: s, from: programmes, codes: p}\n"
        "codes:\n  p: {UNEMPLOYMENT_REGISTRATON: REG}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match="UNEMPLOYMENT_REGISTRATON"):
        load_mapping(path, "dypa")


def test_colliding_outputs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "clash.yaml"
    path.write_text(
        "agency: dypa\nversion: 1\nfields:\n  - {to: a, from: id}\n  - {to: a.b, from: centre}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match=r"clash\.yaml.*collides"):
        load_mapping(path, "dypa")
