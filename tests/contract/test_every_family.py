"""Every installed family passes the one contract: a family without a contract subclass
fails here, so a plugin cannot be added without it."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from hub.families import installed_families
from tests.contract.base import ConnectorContract

HERE = Path(__file__).parent


def contract_subclasses() -> dict[str, list[str]]:
    for module in pkgutil.iter_modules([str(HERE)]):
        if module.name.startswith("test_"):
            importlib.import_module(f"tests.contract.{module.name}")
    found: dict[str, list[str]] = {}
    for cls in ConnectorContract.__subclasses__():
        found.setdefault(getattr(cls, "family", "?"), []).append(cls.__name__)
    return found


def test_every_installed_family_has_exactly_one_contract_subclass() -> None:
    found = contract_subclasses()
    missing = sorted(set(installed_families()) - set(found))
    assert not missing, f"families without a ConnectorContract subclass: {missing}"
    unknown = sorted(set(found) - set(installed_families()))
    assert not unknown, f"contract subclasses for families not installed: {unknown}"
    twice = {family: names for family, names in found.items() if len(names) > 1}
    assert not twice, twice
