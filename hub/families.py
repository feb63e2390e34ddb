"""The agency families installed with this hub, found through their plugin entry points
(``diasyndesi_sdk.family``). The hub knows a family only by its spec."""

from __future__ import annotations

import functools

from diasyndesi_sdk.family import FamilySpec, discover_families
from hub.errors import ConfigurationError
from hub.logs import get_logger
from hub.registry import Registry
from hub.settings import Settings

log = get_logger(__name__)


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


def check_registry_families(registry: Registry, missing: str = "error") -> Registry:
    """Every active agency's family must be installed (an inactive agency's need not be).
    With ``missing="inactive"`` (``MISSING_FAMILY=inactive``) such an agency is taken out of
    routing instead, as if the registry said ``active: false``, and the start goes on; a
    programme only it handles is then refused with a clear error, as for any inactive one."""
    absent = [
        agency
        for agency in registry.agencies.values()
        if agency.active and agency.family not in installed_families()
    ]
    if not absent:
        return registry
    if missing != "inactive":
        first = absent[0]
        raise ConfigurationError(f"registry: agency {first.id}: {family_missing(first.family)}")
    for agency in absent:
        log.warning(
            "agency reported inactive: its family is not installed",
            agency=agency.id,
            family=agency.family,
        )
    gone = {agency.id for agency in absent}
    return Registry(
        list(registry.centres.values()),
        [
            a.model_copy(update={"active": False}) if a.id in gone else a
            for a in registry.agencies.values()
        ],
        list(registry.programmes.values()),
    )


def load_registry(settings: Settings) -> Registry:
    """The registry as every process uses it: loaded, and checked against the installed
    families (``MISSING_FAMILY``)."""
    return check_registry_families(Registry.load(settings.registry_dir), settings.missing_family)
