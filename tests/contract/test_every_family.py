"""Every installed family passes the one contract: a family without a contract subclass
fails here, so a plugin cannot be added without it. Each family keeps its subclass with its
own tests, in ``connectors/<family>/tests/test_contract.py``."""

from __future__ import annotations

import importlib
from pathlib import Path

from hub.families import installed_families
from tests.contract.base import ConnectorContract

CONNECTORS = Path(__file__).resolve().parents[2] / "connectors"


def contract_subclasses() -> dict[str, list[str]]:
    """Family → its subclasses, after importing every family's contract module (under the
    name pytest gives it, so a class is never counted twice)."""
    for module in sorted(CONNECTORS.glob("*/tests/test_contract.py")):
        importlib.import_module(f"connectors.{module.parents[1].name}.tests.test_contract")
    found: dict[str, list[str]] = {}
    for cls in ConnectorContract.__subclasses__():
        found.setdefault(getattr(cls, "family", "?"), []).append(cls.__name__)
    return found


def test_every_installed_family_has_exactly_one_contract_subclass() -> None:
    found = contract_subclasses()
    missing = sorted(set(installed_families()) - set(found))
    assert not missing, (
        f"families without a ConnectorContract subclass: {missing} "
        "(add one in connectors/<family>/tests/test_contract.py)"
    )
    unknown = sorted(set(found) - set(installed_families()))
    assert not unknown, f"contract subclasses for families not installed: {unknown}"
    twice = {family: names for family, names in found.items() if len(names) > 1}
    assert not twice, twice
