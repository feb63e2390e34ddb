"""Golden payloads of every non-ΔΥΠΑ agency mapping (tests/golden/<agency>.json), from one
fixed canonical referral per agency. ``UPDATE_GOLDEN=1`` rewrites the files; the shape tests
below guard each file against a careless rewrite."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hub.mapping import Mapping, load_mapping
from hub.registry import Registry
from hub.samples import sample_referral
from hub.settings import packaged_dir
from schemas.codes import SPECIAL_CATEGORY_VULNERABILITIES
from schemas.referral import Referral

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = packaged_dir("mappings")
REGISTRY = packaged_dir("registry")
GOLDEN_DIR = ROOT / "tests" / "golden"
REFERRAL_ID = "00000000-0000-4000-8000-000000000001"
SPECIAL = {code.value for code in SPECIAL_CATEGORY_VULNERABILITIES}
KOZANI = {"centre": "KK-KOZANI", "municipality": "kozani"}

CASES: dict[str, dict[str, Any]] = {
    "opeka": {
        **KOZANI,
        "programmes": ["GMI", "DISABILITY_ALLOWANCE"],
        "routed": ["opeka"],
        "beneficiary": {"vulnerabilities": ["long_term_unemployed", "disability", "roma"]},
        "notes": "Άνεργη 3 χρόνια, αναπηρία 67%· φέρνει γνωμάτευση ΚΕΠΑ.",
    },
    "kozani-social-grocery": {
        **KOZANI,
        "programmes": ["SOCIAL_GROCERY", "SOCIAL_PHARMACY", "GMI"],
        "routed": ["opeka", "kozani-social-grocery"],
        "beneficiary": {
            "given_name": "Ευαγγελία",
            "family_name": "Παπαδοπούλου",
            "gender": "female",
            "vulnerabilities": ["low_income", "single_parent", "roma"],
        },
        "notes": "Μονογονεϊκή οικογένεια με δύο παιδιά· ανάγκη για τρόφιμα και φάρμακα.",
    },
    "kozani-social-service": {
        **KOZANI,
        "programmes": ["HELP_AT_HOME", "PSYCHOSOCIAL_SUPPORT", "SOCIAL_GROCERY"],
        "routed": ["kozani-social-grocery", "kozani-social-service"],
        "beneficiary": {
            "given_name": "Αικατερίνη",
            "gender": "female",
            "vulnerabilities": ["elderly_living_alone", "chronic_illness", "mental_health"],
        },
        "notes": "Ζει μόνη, χρόνια πάθηση· χρειάζεται βοήθεια στο σπίτι.",
    },
    "karpenisi-social-service": {
        "centre": "KK-KARPENISI",
        "municipality": "karpenisi",
        "programmes": ["HOMELESS_SHELTER", "HOMELESS_DAY_CENTRE", "UNEMPLOYMENT_REGISTRATION"],
        "routed": ["dypa", "karpenisi-social-service"],
        "beneficiary": {
            "given_name": "Δημήτριος",
            "gender": "male",
            "vulnerabilities": ["homeless", "migrant", "substance_use"],
        },
        "notes": "Άστεγος εδώ και δύο μήνες· σε πρόγραμμα απεξάρτησης.",
    },
}


def fixed_referral(agency: str) -> Referral:
    """sample_referral(seed=1) for the agency's case, every time-dependent field pinned."""
    case = CASES[agency]
    body = sample_referral(
        case["centre"], case["programmes"], seed=1, municipality=case["municipality"]
    )
    body["consent"]["given_at"] = "2026-11-20T09:00:00+02:00"
    body["beneficiary"].update(case["beneficiary"])
    body["notes"] = case["notes"]
    return Referral.model_validate(
        {
            **body,
            "id": REFERRAL_ID,
            "created_at": "2026-11-20T09:30:00+00:00",
            "municipality": case["municipality"],
            "routed": case["routed"],
        }
    )


@pytest.fixture(scope="module")
def mappings() -> dict[str, Mapping]:
    registry = Registry.load(REGISTRY)
    return {
        agency: load_mapping(
            MAPPINGS / registry.agencies[agency].mapping,
            agency,
            registry.agencies[agency].family,
        )
        for agency in CASES
    }


def golden(agency: str) -> Any:
    return json.loads((GOLDEN_DIR / f"{agency}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("agency", sorted(CASES))
def test_payload_matches_golden_file(mappings: dict[str, Mapping], agency: str) -> None:
    payload = mappings[agency].apply(fixed_referral(agency).model_dump(mode="json"))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        text = json.dumps(payload, ensure_ascii=False, indent=2) + "\n"
        (GOLDEN_DIR / f"{agency}.json").write_text(text, encoding="utf-8")
    assert payload == golden(agency)


# --------------------------------------------------------------------------- golden shapes


def test_opeka_golden_has_the_agency_shape() -> None:
    referral = fixed_referral("opeka")
    payload = golden("opeka")
    assert payload["hubReferralId"] == REFERRAL_ID
    assert payload["aitoumenaProgrammata"]["kodikosProgrammatos"] == ["EEE", "EPIDOMA_ANAPIRIAS"]
    assert payload["aitoun"]["afm"] == referral.beneficiary.afm  # the one agency with the AFM
    # AMEA only because DISABILITY_ALLOWANCE is asked for; no roma (no code for it), ever.
    assert payload["aitoun"]["kategoriesEypatheias"]["kategoria"] == ["MAKROXRONIA_ANERGOS", "AMEA"]
    text = json.dumps(payload, ensure_ascii=False)
    assert "roma" not in text.lower()
    assert referral.notes is not None and referral.notes not in text
    assert "email" in payload["aitoun"] and "gender" not in text


def test_opeka_sends_no_health_category_without_disability_allowance(
    mappings: dict[str, Mapping],
) -> None:
    document = fixed_referral("opeka").model_dump(mode="json")
    document["programmes"] = ["GMI", "HOUSING_ALLOWANCE"]
    payload = mappings["opeka"].apply(document)
    assert payload["aitoun"]["kategoriesEypatheias"]["kategoria"] == ["MAKROXRONIA_ANERGOS"]
    assert payload["aitoumenaProgrammata"]["kodikosProgrammatos"] == ["EEE", "EPIDOMA_STEGASIS"]


def test_grocery_golden_is_latin_only_and_minimal() -> None:
    payload = golden("kozani-social-grocery")
    household = payload["household"]
    assert (household["first_name"], household["last_name"]) == ("Evangelia", "Papadopoulou")
    assert household["address"]["street"] == "Dimokratias 1"
    assert payload["services"] == ["GROCERY", "PHARMACY"]  # GMI is not the grocery's
    text = json.dumps(payload)  # ensure_ascii=True: any Greek letter would show as \u03..
    assert "\\u" not in text
    for absent in ("vulnerabilities", "notes", "afm", "birth", "email", "gender"):
        assert absent not in text
    for code in SPECIAL | {"low_income", "single_parent"}:  # no flag at all, not even Latin
        assert code not in text.lower()


@pytest.mark.parametrize("agency", ["kozani-social-service", "karpenisi-social-service"])
def test_municipal_golden_has_notes_and_every_flag(agency: str) -> None:
    referral = fixed_referral(agency)
    payload = golden(agency)
    case = CASES[agency]
    assert payload["notes"] == case["notes"]
    assert payload["vulnerabilities"] == case["beneficiary"]["vulnerabilities"]
    assert SPECIAL & set(payload["vulnerabilities"])  # special-category flags included
    assert payload["referring_centre"] == case["centre"]
    assert payload["citizen"]["given_name"] == referral.beneficiary.given_name  # Greek kept
    assert payload["citizen"]["address"]["municipality"] == case["municipality"]
    own = {"HELP_AT_HOME", "PSYCHOSOCIAL_SUPPORT", "HOMELESS_SHELTER", "HOMELESS_DAY_CENTRE"}
    assert set(payload["services"]) <= own and len(payload["services"]) == 2
    assert referral.beneficiary.afm is not None
    assert referral.beneficiary.afm not in json.dumps(payload)
    assert payload["source_system"] == "DIASYNDESI"
