"""The agency families installed with this hub, found through their plugin entry points
(``diasyndesi_sdk.family``). The hub knows a family only by its spec."""

from __future__ import annotations

import functools

from diasyndesi_sdk.family import FamilySpec, discover_families
from hub.errors import ConfigurationError
from hub.registry import Registry


@functools.cache
def installed_families() -> dict[str, FamilySpec]:
    """Discovered once per process (the entry points do not change while it runs)."""
    return discover_families()


def family_spec(name: str) -> FamilySpec:
    spec = installed_families().get(name)
    if spec is None:
        raise ConfigurationError(family_missing(name))
    return spec


def family_missing(name: str) -> str:
    known = ", ".join(sorted(installed_families())) or "none"
    return (
        f"agency family {name!r} is not installed (installed: {known}); install the package "
        "that provides it (entry point group diasyndesi.families)"
    )


def check_registry_families(registry: Registry) -> None:
    """Every active agency's family must be installed; an inactive agency's need not be."""
    for agency in registry.agencies.values():
        if agency.active and agency.family not in installed_families():
            missing = family_missing(agency.family)
            raise ConfigurationError(f"registry: agency {agency.id}: {missing}")
