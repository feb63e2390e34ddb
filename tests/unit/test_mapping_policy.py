"""The mappings a process starts with: every active agency's, and a code list of an agency's
programmes names only programmes that agency handles (a programme code can be health data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hub.errors import ConfigurationError
from hub.mapping_policy import load_mappings
from hub.registry import Registry
from hub.settings import Settings, packaged_dir


def test_every_active_agency_gets_its_mapping() -> None:
    settings = Settings()
    registry = Registry.load(settings.registry_dir)
    mappings = load_mappings(settings, registry)
    assert set(mappings) == {agency.id for agency in registry.active_agencies}
    assert all(mappings[agency].agency == agency for agency in mappings)


def test_a_code_list_naming_another_agencys_programme_stops_the_start(tmp_path: Path) -> None:
    mappings_dir = tmp_path / "mappings"
    shutil.copytree(packaged_dir("mappings"), mappings_dir)
    dypa = mappings_dir / "dypa.yaml"
    text = dypa.read_text(encoding="utf-8")
    marker = "    VOCATIONAL_TRAINING: TRAINING\n"
    assert marker in text
    dypa.write_text(text.replace(marker, marker + "    SOCIAL_GROCERY: GROCERY\n"), "utf-8")
    settings = Settings(mappings_dir=mappings_dir)
    with pytest.raises(ConfigurationError) as refused:
        load_mappings(settings, Registry.load(settings.registry_dir))
    assert str(refused.value) == (
        f"{dypa}: fields.14 (services): code list 'services' names programmes "
        "['SOCIAL_GROCERY'] that dypa does not handle"
    )
