"""Declarative per-agency mappings (``mappings/<agency>.yaml``): pure data transformations
from the canonical referral to the agency's payload.

A mapping is an allow-list: only the fields it names leave the hub (GDPR data
minimisation). Each rule copies one canonical path to one output path, optionally through a
code list (unlisted codes are dropped, so an agency never learns of programmes that are
not its own) or a date format. Mappings are validated against the canonical JSON Schema
at start-up; a bad one stops the start naming the file and the field.

Why not a general transformation library (jq, JMESPath, glom): an allow-list of path
copies is all the agencies need, and it keeps "what leaves the hub" readable by a DPO.
"""

from __future__ import annotations

import copy
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hub.errors import ConfigurationError
from hub.transliteration import elot743
from schemas.codes import (
    SPECIAL_CATEGORY_VULNERABILITIES,
    Gender,
    IdentifierType,
    ProgrammeCode,
    Vulnerability,
)
from schemas.referral import Referral


class FieldRule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    source: str | None = Field(default=None, alias="from")
    value: str | int | bool | None = None
    codes: str | None = None
    date_format: str | None = None
    transliterate: Literal["elot743"] | None = None
    when_programmes: list[ProgrammeCode] | None = Field(
        default=None, description="apply only when the referral asks for one of these"
    )
    required: bool = False
    merge: bool = Field(
        default=False, description="extend a list an earlier rule wrote to the same output"
    )

    @model_validator(mode="after")
    def _one_source(self) -> FieldRule:
        if (self.source is None) == (self.value is None):
            raise ValueError(f"rule for {self.to!r} needs exactly one of 'from' or 'value'")
        return self


class Mapping(BaseModel):
    """One agency's mapping file."""

    model_config = ConfigDict(extra="forbid")

    agency: str
    version: int = Field(ge=1)
    fields: list[FieldRule]
    codes: dict[str, dict[str, str]] = Field(default_factory=dict)

    @property
    def allowed_sources(self) -> set[str]:
        """The canonical paths this agency may receive: the allow-list."""
        return {rule.source for rule in self.fields if rule.source}

    def programme_codes(self, programmes: list[str]) -> list[str]:
        """``programmes`` (canonical codes) in the agency's own codes, through the code list
        its mapping applies to ``programmes`` (what a withdrawal names); a code the agency
        has none for is dropped, as in ``apply``. Without such a list, the canonical codes."""
        for rule in self.fields:
            if rule.source == "programmes" and rule.codes is not None:
                table = self.codes[rule.codes]
                return list(dict.fromkeys(table[p] for p in programmes if p in table))
        return list(programmes)

    def apply(self, referral: dict[str, Any]) -> dict[str, Any]:
        """Build the agency payload from a canonical referral (``model_dump(mode="json")``).

        Never mutates its input. A missing optional source is left out of the output.
        """
        out: dict[str, Any] = {}
        requested = set(referral.get("programmes", ()))
        for rule in self.fields:
            if rule.when_programmes is not None and not requested & set(rule.when_programmes):
                continue
            if rule.value is not None:
                _put(out, rule.to, rule.value)
                continue
            assert rule.source is not None
            found, raw = _get(referral, rule.source)
            if not found or raw is None:
                if rule.required:
                    raise ValueError(f"mapping {self.agency}: required field {rule.source} missing")
                continue
            value = copy.deepcopy(raw)
            if rule.codes is not None:
                table = self.codes[rule.codes]
                if isinstance(value, list):
                    value = [table[v] for v in value if v in table]
                else:
                    value = table.get(value)
                    if value is None:
                        if rule.required:
                            raise ValueError(
                                f"mapping {self.agency}: required field {rule.source} "
                                f"has no code in {rule.codes}"
                            )
                        continue
            if rule.date_format is not None:
                value = _format_date(value, rule.date_format)
            if rule.transliterate == "elot743":
                value = _transliterate(value)
            _put(out, rule.to, value, merge=rule.merge)
        return out


def _get(document: Any, path: str) -> tuple[bool, Any]:
    node = document
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _put(document: dict[str, Any], path: str, value: Any, *, merge: bool = False) -> None:
    *parents, leaf = path.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    if merge and isinstance(node.get(leaf), list) and isinstance(value, list):
        node[leaf] = node[leaf] + [v for v in value if v not in node[leaf]]
    else:
        node[leaf] = value


def _transliterate(value: Any) -> Any:
    if isinstance(value, str):
        return elot743(value)
    if isinstance(value, list):
        return [_transliterate(v) for v in value]
    return value


def _format_date(value: Any, fmt: str) -> str:
    parsed: date = (
        datetime.fromisoformat(value) if "T" in str(value) else date.fromisoformat(str(value))
    )
    return parsed.strftime(fmt)


def _schema_paths(schema: dict[str, Any]) -> set[str]:
    """Every dotted property path in a Pydantic JSON Schema (lists are transparent)."""
    definitions = schema.get("$defs", {})
    paths: set[str] = set()

    def resolve(node: dict[str, Any]) -> list[dict[str, Any]]:
        if "$ref" in node:
            return resolve(definitions[node["$ref"].split("/")[-1]])
        options = node.get("anyOf") or node.get("allOf") or node.get("oneOf")
        if options:
            return [leaf for option in options for leaf in resolve(option)]
        if node.get("type") == "array" and "items" in node:
            return resolve(node["items"])
        return [node]

    def walk(node: dict[str, Any], prefix: str) -> None:
        for option in resolve(node):
            for name, child in option.get("properties", {}).items():
                path = f"{prefix}{name}"
                paths.add(path)
                walk(child, f"{path}.")

    walk(schema, "")
    return paths


CANONICAL_PATHS = frozenset(_schema_paths(Referral.model_json_schema()))
LEAF_PATHS = CANONICAL_PATHS - {p.rsplit(".", 1)[0] for p in CANONICAL_PATHS if "." in p}
"""Only leaves may be copied: ``from: beneficiary`` would smuggle out every field below it."""

CODE_DOMAINS: dict[str, frozenset[str]] = {
    "programmes": frozenset(ProgrammeCode),
    "beneficiary.vulnerabilities": frozenset(Vulnerability),
    "beneficiary.gender": frozenset(Gender),
    "beneficiary.identifier.type": frozenset(IdentifierType),
}
"""Canonical code sets; a code list applied to one of these paths may only use its codes."""


SPECIAL_CODES = frozenset(code.value for code in SPECIAL_CATEGORY_VULNERABILITIES)


def check_minimisation(mapping: Mapping, family: str, where: str) -> None:
    """The data-minimisation rules of the project, enforced on every mapping at start-up
    from the family's ``Minimisation`` profile (its plugin spec):

    * the AFM goes only to a family whose profile allows it (the benefits agency);
    * free-text notes likewise (the municipal social service);
    * vulnerabilities go out only through a code list naming what may leave, and
      special-category codes (health, disability, Roma or migrant background) only to a
      family allowing them all (the municipal social service) or, for
      ``disability_allowance_only`` (the benefits agency), in rules that apply when the
      referral asks for DISABILITY_ALLOWANCE; never to anyone else.
    """
    from hub.families import family_spec

    allowed = family_spec(family).minimisation
    for index, rule in enumerate(mapping.fields):
        here = f"{where}: fields.{index} ({rule.to})"
        if rule.source == "programmes" and rule.codes is None:
            raise ConfigurationError(
                f"{here}: programmes need a code list naming the agency's own programmes"
            )
        if rule.source == "beneficiary.afm" and not allowed.afm:
            raise ConfigurationError(f"{here}: the AFM may not go to a {family}")
        if rule.source == "notes" and not allowed.notes:
            raise ConfigurationError(f"{here}: free-text notes may not go to a {family}")
        if rule.source != "beneficiary.vulnerabilities" or allowed.special_categories == "all":
            continue
        if rule.codes is None:
            raise ConfigurationError(
                f"{here}: vulnerabilities need a code list that names what may leave the hub"
            )
        special = sorted(SPECIAL_CODES & set(mapping.codes[rule.codes]))
        disability_only = rule.when_programmes == [ProgrammeCode.DISABILITY_ALLOWANCE]
        if special and not (
            allowed.special_categories == "disability_allowance_only" and disability_only
        ):
            raise ConfigurationError(
                f"{here}: special-category codes {special} may not go to a {family}"
                + (
                    " (only in a rule with when_programmes: [DISABILITY_ALLOWANCE])"
                    if allowed.special_categories == "disability_allowance_only"
                    else ""
                )
            )


def load_mapping(path: Path, agency: str, family: str | None = None) -> Mapping:
    """Load and validate one mapping file; ConfigurationError names file and field.

    With ``family`` the minimisation rules of ``check_minimisation`` are enforced too.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        mapping = Mapping.model_validate(raw)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read mapping ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML ({exc})") from None
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"{path}: {where}: {first['msg']}") from None
    if mapping.agency != agency:
        raise ConfigurationError(f"{path}: agency is {mapping.agency!r}, expected {agency!r}")
    targets: set[str] = set()
    for index, rule in enumerate(mapping.fields):
        where = f"{path}: fields.{index} ({rule.to})"
        if rule.source is not None and rule.source not in LEAF_PATHS:
            raise ConfigurationError(
                f"{where}: {rule.source!r} is not a canonical referral leaf field"
            )
        clash = next(
            (
                t
                for t in targets
                if (t == rule.to and not rule.merge)
                or t.startswith(f"{rule.to}.")
                or rule.to.startswith(f"{t}.")
            ),
            None,
        )
        if clash is not None:
            raise ConfigurationError(f"{where}: output {rule.to!r} collides with {clash!r}")
        targets.add(rule.to)
        if rule.codes is not None:
            if rule.codes not in mapping.codes:
                raise ConfigurationError(f"{where}: code list {rule.codes!r} is not defined")
            domain = CODE_DOMAINS.get(rule.source or "")
            unknown = sorted(set(mapping.codes[rule.codes]) - domain) if domain else []
            if unknown:
                raise ConfigurationError(
                    f"{where}: code list {rule.codes!r} has unknown codes {unknown}"
                )
    if family is not None:
        check_minimisation(mapping, family, str(path))
    return mapping
