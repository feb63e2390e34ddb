"""Which mappings a hub process may start with: every active agency's mapping, loaded and
checked against the rules that need the registry as well as the file (decision 0008).

``hub/mapping.py`` checks what one file can say about itself (schema, leaf fields, code
lists, the minimisation rules of its family); this module adds what only the registry
knows, such as the programmes an agency handles.
"""

from __future__ import annotations

from pathlib import Path

from hub.errors import ConfigurationError
from hub.mapping import Mapping, load_mapping
from hub.registry import Agency, Registry
from hub.settings import Settings


def load_mappings(settings: Settings, registry: Registry) -> dict[str, Mapping]:
    """Validate every active agency's mapping; a bad one stops the start."""
    mappings = {}
    for agency in registry.active_agencies:
        path = settings.mappings_dir / agency.mapping
        mapping = load_mapping(path, agency.id, agency.family)
        check_own_programmes(mapping, agency, path)
        mappings[agency.id] = mapping
    return mappings


def check_own_programmes(mapping: Mapping, agency: Agency, path: Path) -> None:
    """An agency's programme code list may name only its own programmes: a programme code
    can itself be health data (e.g. DISABILITY_DAY_CARE)."""
    own = {p.value for p in agency.programmes}
    for index, rule in enumerate(mapping.fields):
        if rule.source == "programmes" and rule.codes:
            foreign = sorted(set(mapping.codes[rule.codes]) - own)
            if foreign:
                raise ConfigurationError(
                    f"{path}: fields.{index} ({rule.to}): code list {rule.codes!r} "
                    f"names programmes {foreign} that {agency.id} does not handle"
                )
