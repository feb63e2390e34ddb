"""What leaves the hub for the Lifelong Learning Centre (mappings/kozani-lifelong-learning.yaml).

The minimisation rules are the family's own profile (its ``FamilySpec``: no AFM, no notes,
no special categories), as the hub checks them at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub.errors import ConfigurationError
from hub.mapping import Mapping, check_minimisation, load_mapping
from hub.samples import sample_referral
from hub.settings import packaged_dir

from .conftest import AGENCY, ConnectorFactory, Sandbox, delivery

FILE = packaged_dir("mappings") / f"{AGENCY}.yaml"
FAMILY = "lifelong_learning"


def referral() -> dict[str, Any]:
    body = sample_referral("KK-KOZANI", ["GREEK_LANGUAGE", "DIGITAL_SKILLS", "GMI"], seed=3)
    body["beneficiary"].update(given_name="Αμίνα", vulnerabilities=["refugee", "unemployed"])
    created = {"id": "ref-1", "created_at": "2026-11-20T09:30:00+00:00", "municipality": "kozani"}
    return {**body, **created}


def test_mapping_passes_the_minimisation_rules() -> None:
    loaded = load_mapping(FILE, AGENCY, FAMILY)
    assert not loaded.allowed_sources & {
        "beneficiary.afm",
        "notes",
        "beneficiary.vulnerabilities",
        "beneficiary.address.street",
        "beneficiary.household_size",
    }


def test_payload_carries_only_what_the_centre_needs() -> None:
    source = referral()
    payload = load_mapping(FILE, AGENCY, FAMILY).apply(source)
    assert payload["courses"] == ["GREEK_AS_A_SECOND_LANGUAGE", "DIGITAL_SKILLS"]  # no GMI
    assert payload["learner"]["given_name"] == "Αμίνα"  # UTF-8, not transliterated
    wire = json.dumps(payload, ensure_ascii=False)
    beneficiary = source["beneficiary"]
    for kept_back in (
        beneficiary["afm"],
        source["notes"],
        "refugee",
        beneficiary["address"]["street"],
    ):
        assert kept_back not in wire


def test_the_rules_do_hold_for_this_family(tmp_path: Path) -> None:
    raw = yaml.safe_load(FILE.read_text(encoding="utf-8"))
    raw["fields"].append({"to": "learner.afm", "from": "beneficiary.afm"})
    with pytest.raises(ConfigurationError, match="AFM"):
        check_minimisation(Mapping.model_validate(raw), FAMILY, "test")
    raw["fields"][-1] = {"to": "background", "from": "beneficiary.vulnerabilities", "codes": "v"}
    raw["codes"]["v"] = {"refugee": "refugee"}
    with pytest.raises(ConfigurationError, match="special-category"):
        check_minimisation(Mapping.model_validate(raw), FAMILY, "test")


async def test_the_sandbox_takes_what_the_mapping_makes(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    payload = load_mapping(FILE, AGENCY, FAMILY).apply(referral())
    receipt = await (await make_connector()).deliver(delivery(body=payload))
    assert receipt.reference == "KDBM-KOZ-000001"
