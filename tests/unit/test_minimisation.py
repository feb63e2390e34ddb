"""Data minimisation, proved for EVERY agency in the registry: over many generated
referrals (all programmes, all vulnerabilities, every identifier type, AFM and notes always
present), nothing outside an agency's allow-list ever leaves the hub. And the start-up
check (``check_minimisation``) refuses mappings that would break the rules."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ConfigurationError
from hub.mapping import FieldRule, Mapping, load_mapping
from hub.registry import Agency, Registry
from hub.samples import sample_referral
from hub.settings import packaged_dir
from hub.transliteration import elot743
from schemas.codes import SPECIAL_CATEGORY_VULNERABILITIES, ProgrammeCode, Vulnerability
from schemas.referral import Referral

REGISTRY = Registry.load(packaged_dir("registry"))
AGENCIES = sorted(REGISTRY.agencies)
SEEDS = range(200)
SPECIAL = sorted(code.value for code in SPECIAL_CATEGORY_VULNERABILITIES)
STREETS = ["Δημοκρατίας 1", "Ευαγγελιστρίας 12", "Αγχιάλου 3", "Μπουμπουλίνας 40"]


def load(agency: Agency) -> Mapping:
    return load_mapping(packaged_dir("mappings") / agency.mapping, agency.id, agency.family)


MAPPINGS = {agency_id: load(REGISTRY.agencies[agency_id]) for agency_id in AGENCIES}
TABLES = [table for m in MAPPINGS.values() for table in m.codes.values()]
SPECIAL_TOKENS = {*SPECIAL, *(c.upper() for c in SPECIAL)}
SPECIAL_TOKENS |= {table[code] for table in TABLES for code in SPECIAL if code in table}


def generated(agency: Agency, seed: int) -> tuple[Referral, str]:
    """A valid referral for ``agency`` (at least one of its programmes) and its notes marker."""
    rng = random.Random(f"{agency.id}:{seed}")
    body = sample_referral(seed=seed)
    programmes = rng.sample(list(ProgrammeCode), rng.randint(1, 8))
    if not set(programmes) & set(agency.programmes):
        programmes.insert(rng.randrange(len(programmes) + 1), rng.choice(agency.programmes))
    vulnerabilities = rng.sample(list(Vulnerability), rng.randint(0, len(Vulnerability)))
    if seed % 4 == 0:  # every special-category code, on a quarter of the referrals
        vulnerabilities = sorted({*vulnerabilities, *SPECIAL_CATEGORY_VULNERABILITIES})
        rng.shuffle(vulnerabilities)
    beneficiary = body["beneficiary"]
    kind = ["AMKA", "PAAYPA", "PASSPORT", "OTHER"][seed // 4 % 4]
    if kind != "AMKA":
        number = rng.randrange(10**6)
        value = {"PAAYPA": f"7{number:09d}", "PASSPORT": f"ΑΕ{number:06d}"}
        beneficiary["identifier"] = {"type": kind, "value": value.get(kind, f"Άδεια {number}")}
    beneficiary["vulnerabilities"] = vulnerabilities
    beneficiary["address"]["street"] = rng.choice(STREETS)
    for optional in ("phone", "email", "address", "gender", "household_size"):
        if rng.random() < 0.2:
            beneficiary[optional] = None
    marker = f"NOTEMARK{seed:04d}Q{rng.randrange(10**6):06d}"
    created = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(500_000))
    tz = timezone(timedelta(hours=rng.choice([0, 2, 3, -5])))
    body.update(
        programmes=[p.value for p in programmes],
        notes=f"Συνάντηση στο Κέντρο· {marker} · χρειάζεται στήριξη.",
        caseworker=f"CASEWORKER{seed:04d}X",
    )
    body["consent"]["given_at"] = (created - timedelta(hours=1)).astimezone(tz).isoformat()
    referral = Referral.model_validate(
        {
            **body,
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "created_at": created.astimezone(tz).isoformat(),
            "municipality": "kozani",
            "routed": [agency.id],
        }
    )
    return referral, marker


def produce(mapping: Mapping, rule: FieldRule, document: dict[str, Any]) -> set[Any]:
    """Every atom this rule could write for this referral (built independently of apply)."""
    requested = set(document["programmes"])
    if rule.when_programmes is not None and not requested & set(rule.when_programmes):
        return set()
    if rule.value is not None:
        return {rule.value}
    node: Any = document
    for part in (rule.source or "").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    raw = node if isinstance(node, list) else [] if node is None else [node]
    atoms: set[Any] = set()
    for item in raw:
        if rule.codes is not None:
            if item not in mapping.codes[rule.codes]:
                continue
            item = mapping.codes[rule.codes][item]
        if rule.date_format is not None:
            item = datetime.fromisoformat(item) if "T" in item else date.fromisoformat(item)
            item = item.strftime(rule.date_format)
        if rule.transliterate == "elot743" and isinstance(item, str):
            item = elot743(item)
        atoms.add(item)
    return atoms


def leaves(node: Any, prefix: str = "") -> dict[str, list[Any]]:
    """Dotted path -> its atoms (a list leaf gives its elements)."""
    if isinstance(node, dict):
        found: dict[str, list[Any]] = {}
        for key, child in node.items():
            found.update(leaves(child, f"{prefix}{key}."))
        return found
    return {prefix.rstrip("."): node if isinstance(node, list) else [node]}


@pytest.mark.parametrize("agency_id", AGENCIES)
def test_nothing_outside_the_allow_list_ever_leaves_the_hub(agency_id: str) -> None:
    agency = REGISTRY.agencies[agency_id]
    mapping = MAPPINGS[agency_id]
    family = agency.family
    own = {p.value for p in agency.programmes}
    programme_tables = {r.codes for r in mapping.fields if r.source == "programmes" and r.codes}
    foreign_tokens = {p.value for p in ProgrammeCode} - own
    foreign_tokens |= {table[p] for table in TABLES for p in foreign_tokens if p in table}
    foreign_tokens -= {mapping.codes[t][p] for t in programme_tables for p in own}
    seen: Counter[str] = Counter()
    kinds: set[str] = set()
    for seed in SEEDS:
        referral, marker = generated(agency, seed)
        document = referral.model_dump(mode="json")
        payload = mapping.apply(document)
        text = json.dumps(payload, ensure_ascii=False)
        out = leaves(payload)
        atoms = [atom for values in out.values() for atom in values]
        where = f"{agency_id} seed {seed}"
        kinds.add(referral.beneficiary.identifier.type)
        # (a) each leaf traceable to a rule for that output path, from an allowed source
        for path, values in out.items():
            rules = [r for r in mapping.fields if r.to == path]
            assert rules, f"{where}: {path} written by no rule"
            assert all(r.value is not None or r.source in mapping.allowed_sources for r in rules)
            could = set().union(*(produce(mapping, r, document) for r in rules))
            stray = [v for v in values if v not in could]
            assert not stray, f"{where}: {path} has untraceable {stray}"
        assert referral.caseworker not in text, where
        # (b) the AFM only to the benefits agency
        afm = referral.beneficiary.afm
        assert afm is not None
        assert (afm in text) == (family == "benefits_agency"), where
        seen["afm"] += afm in text
        # (c) the notes only to the municipal social service
        assert (marker in text) == (family == "municipal_social_service"), where
        seen["notes"] += marker in text
        # (d) special-category codes: municipal, or benefits asked for DISABILITY_ALLOWANCE
        leaked = SPECIAL_TOKENS & set(atoms)
        disability = "DISABILITY_ALLOWANCE" in document["programmes"]
        if family == "municipal_social_service":
            assert leaked == set(SPECIAL) & set(document["beneficiary"]["vulnerabilities"])
        elif family == "benefits_agency" and disability:  # only from the gated rules
            gated = [produce(mapping, r, document) for r in mapping.fields if r.when_programmes]
            assert leaked <= set().union(*gated), where
        else:
            assert not leaked, f"{where}: special-category {sorted(leaked)} to a {family}"
        seen["special"] += bool(leaked)
        seen["disability"] += disability
        # (e) programme lists carry only codes mapped from the agency's own programmes
        asked = own & set(document["programmes"])
        for rule in mapping.fields:
            if rule.source == "programmes":
                table = mapping.codes[rule.codes or ""] if rule.codes else {}
                allowed = {table.get(p, p) for p in asked}
                assert set(out.get(rule.to, [])) <= allowed, f"{where}: {rule.to}"
        assert not foreign_tokens & set(atoms), f"{where}: foreign {foreign_tokens & set(atoms)}"
    # the generator really exercised the risky cases for this agency
    assert kinds == {"AMKA", "PAAYPA", "PASSPORT", "OTHER"}
    assert 0 < seen["disability"] < len(SEEDS)  # with and without DISABILITY_ALLOWANCE
    if family == "benefits_agency":
        assert seen["afm"] == len(SEEDS) and seen["special"] > 0
    if family == "municipal_social_service":
        assert seen["notes"] == len(SEEDS) and seen["special"] > 0


@pytest.mark.parametrize("agency_id", AGENCIES)
def test_programme_code_lists_cover_exactly_the_agencys_programmes(agency_id: str) -> None:
    agency, mapping = REGISTRY.agencies[agency_id], MAPPINGS[agency_id]
    rules = [r for r in mapping.fields if r.source == "programmes"]
    assert rules and all(r.codes for r in rules), "programmes need a code list"
    for rule in rules:
        assert set(mapping.codes[rule.codes or ""]) == {p.value for p in agency.programmes}


# --------------------------------------------------------------------------- refusals

REFUSED = {
    "grocery_with_afm": (
        "kozani-social-grocery",
        "social_grocery",
        "fields:\n  - {to: external_id, from: id}\n"
        "  - {to: household.tax_id, from: beneficiary.afm}\n",
        ["fields.1 (household.tax_id)", "AFM"],
    ),
    "employment_with_notes": (
        "dypa",
        "employment_service",
        "fields:\n  - {to: remarks, from: notes}\n",
        ["fields.0 (remarks)", "notes"],
    ),
    "benefits_disability_always": (
        "opeka",
        "benefits_agency",
        "fields:\n  - {to: k, from: beneficiary.vulnerabilities, codes: h}\n"
        "codes:\n  h: {disability: AMEA, low_income: XAMILO_EISODIMA}\n",
        ["fields.0 (k)", "special-category", "disability", "DISABILITY_ALLOWANCE"],
    ),
    "benefits_disability_for_gmi": (
        "opeka",
        "benefits_agency",
        "fields:\n  - {to: k, from: beneficiary.vulnerabilities, codes: h,"
        " when_programmes: [GMI, DISABILITY_ALLOWANCE]}\ncodes:\n  h: {disability: AMEA}\n",
        ["fields.0 (k)", "special-category", "disability"],
    ),
    "grocery_vulnerabilities_uncoded": (
        "kozani-social-grocery",
        "social_grocery",
        "fields:\n  - {to: household.flags, from: beneficiary.vulnerabilities}\n",
        ["fields.0 (household.flags)", "code list"],
    ),
    "employment_with_roma": (
        "dypa",
        "employment_service",
        "fields:\n  - {to: flags, from: beneficiary.vulnerabilities, codes: f,"
        " when_programmes: [DISABILITY_ALLOWANCE]}\ncodes:\n  f: {roma: ROMA}\n",
        ["fields.0 (flags)", "roma", "employment_service"],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_check_minimisation_refuses_naming_file_and_field(tmp_path: Path, case: str) -> None:
    agency, family, fields, fragments = REFUSED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(f"agency: {agency}\nversion: 1\n{fields}", encoding="utf-8")
    load_mapping(path, agency)  # structurally valid: only the minimisation rules refuse it
    with pytest.raises(ConfigurationError) as caught:
        load_mapping(path, agency, family)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def test_the_same_rules_pass_where_the_family_may_receive_them(tmp_path: Path) -> None:
    """Controls for the refusals: the rules are about who receives, not the rule itself."""
    cases = [
        ("opeka", "benefits_agency", REFUSED["grocery_with_afm"][2]),
        ("kozani-social-service", "municipal_social_service", REFUSED["employment_with_notes"][2]),
        (
            "opeka",
            "benefits_agency",
            "fields:\n  - {to: k, from: beneficiary.vulnerabilities, codes: h,"
            " when_programmes: [DISABILITY_ALLOWANCE]}\ncodes:\n  h: {disability: AMEA}\n",
        ),
        (
            "karpenisi-social-service",
            "municipal_social_service",
            REFUSED["grocery_vulnerabilities_uncoded"][2],
        ),
    ]
    for index, (agency, family, fields) in enumerate(cases):
        path = tmp_path / f"ok-{index}.yaml"
        path.write_text(f"agency: {agency}\nversion: 1\n{fields}", encoding="utf-8")
        assert load_mapping(path, agency, family).fields


def test_check_minimisation_refuses_programmes_without_a_code_list(tmp_path: Path) -> None:
    path = tmp_path / "all-programmes.yaml"
    path.write_text(
        "agency: kozani-social-grocery\nversion: 1\n"
        "fields:\n  - {to: services, from: programmes}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match=r"all-programmes\.yaml: fields\.0 \(services\)"):
        load_mapping(path, "kozani-social-grocery", "social_grocery")
