"""What an agency family publishes, and how the hub finds it.

A family is a plugin: a package that declares, in its ``pyproject.toml``,

    [project.entry-points."diasyndesi.families"]
    lifelong_learning = "connectors.lifelong_learning:FAMILY"

where ``FAMILY`` is a ``FamilySpec``. The hub reads the group at start-up
(``discover_families``) and from then on knows the family only through its spec: it names
no family and imports no family package (docs/decisions/0014-families-as-plugins.md).

The connector and the sandbox are named by ``"module:attribute"`` strings and imported only
where they are used: a ``serve`` process never loads a SOAP stack, and a production install
without the sandboxes still discovers every family.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field, fields
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Literal, get_args

from diasyndesi_sdk.connection import AgencyConnection
from diasyndesi_sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from diasyndesi_sdk.connector import Connector
    from diasyndesi_sdk.sandbox import Sandbox

__all__ = [
    "ENTRY_POINT_GROUP",
    "FamilySpec",
    "Minimisation",
    "StatusCapability",
    "discover_families",
    "load_object",
]

ENTRY_POINT_GROUP = "diasyndesi.families"
StatusCapability = Literal["push", "poll", "both"]
SpecialCategories = Literal["never", "all", "disability_allowance_only"]
_NAME = re.compile(r"^[a-z][a-z0-9_]{1,62}$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Minimisation:
    """What the family's mappings may send beyond plain identity and contact fields,
    enforced on every mapping at start-up (docs/decisions/0008): the AFM (tax number),
    free-text notes, and special-category codes (health, disability, Roma or migrant
    background); ``disability_allowance_only`` allows them only in a rule limited to
    ``when_programmes: [DISABILITY_ALLOWANCE]``."""

    afm: bool = False
    notes: bool = False
    special_categories: SpecialCategories = "never"


@dataclass(frozen=True)
class FamilySpec:
    """One agency family, as the hub sees it."""

    name: str
    connector: str
    """``"module:Class"`` of its ``Connector`` subclass."""
    connection: type[AgencyConnection] = AgencyConnection
    """Its connection settings model (``AGENCIES__<ID>__<FIELD>``), validated strictly."""
    status: StatusCapability = "push"
    """How its agencies report status: they push it, the hub polls (``PollsStatus``), or both."""
    minimisation: Minimisation = field(default_factory=Minimisation)
    supports: frozenset[str] = frozenset()
    """Optional abilities: ``{"withdrawal"}`` when its connector is ``Withdraws``."""
    sandbox: str | None = None
    """``"module:attribute"`` of its simulated agency (a ``Sandbox``), development only."""

    def load_connector(self) -> type[Connector]:
        from diasyndesi_sdk.connector import Connector

        loaded = load_object(self.connector, f"family {self.name}: connector")
        if not (isinstance(loaded, type) and issubclass(loaded, Connector)):
            raise ConfigurationError(
                f"family {self.name}: connector {self.connector} is not a Connector subclass"
            )
        return loaded

    def load_sandbox(self) -> Sandbox:
        from diasyndesi_sdk.sandbox import Sandbox

        if self.sandbox is None:
            raise ConfigurationError(f"family {self.name} has no sandbox")
        loaded = load_object(self.sandbox, f"family {self.name}: sandbox")
        if not isinstance(loaded, Sandbox):
            raise ConfigurationError(
                f"family {self.name}: sandbox {self.sandbox} is not a Sandbox instance"
            )
        return loaded

    def problems(self) -> list[str]:
        """What is missing or malformed in this spec (empty when it is complete)."""
        found = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            found.append("name (lower-case letters, digits and _)")
        if not isinstance(self.connector, str) or not _TARGET.match(self.connector):
            found.append("connector ('module:Class')")
        if not (
            isinstance(self.connection, type) and issubclass(self.connection, AgencyConnection)
        ):
            found.append("connection (an AgencyConnection subclass)")
        if self.status not in get_args(StatusCapability):
            found.append(f"status (one of {', '.join(get_args(StatusCapability))})")
        if not isinstance(self.minimisation, Minimisation):
            found.append("minimisation (a Minimisation)")
        elif self.minimisation.special_categories not in get_args(SpecialCategories):
            found.append("minimisation.special_categories")
        if not isinstance(self.supports, frozenset):
            found.append("supports (a frozenset)")
        if self.sandbox is not None and (
            not isinstance(self.sandbox, str) or not _TARGET.match(self.sandbox)
        ):
            found.append("sandbox ('module:attribute' or None)")
        return found


def load_object(target: str, what: str) -> Any:
    """Import ``"module:attribute"``; a clear ConfigurationError naming ``what`` if it fails."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"{what}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"{what}: {module_name} has no {attribute}") from None


def discover_families(group: str = ENTRY_POINT_GROUP) -> dict[str, FamilySpec]:
    """Every installed family, by name. A plugin that fails to import or publishes an
    incomplete spec stops start-up with a message naming its package and what is wrong."""
    families: dict[str, FamilySpec] = {}
    for point in entry_points(group=group):
        spec = _load_spec(point)
        if spec.name in families:
            raise ConfigurationError(
                f"family {spec.name} is installed twice ({_package(point)} and another)"
            )
        families[spec.name] = spec
    return families


def _load_spec(point: EntryPoint) -> FamilySpec:
    where = f"family plugin {point.name!r} ({point.value}, package {_package(point)})"
    try:
        spec = point.load()
    except Exception as exc:  # any import-time failure of a plugin stops start-up, clearly
        raise ConfigurationError(f"{where} failed to import: {type(exc).__name__}: {exc}") from None
    if not isinstance(spec, FamilySpec):
        present = {f.name for f in fields(FamilySpec)} & set(dir(spec))
        missing = sorted({f.name for f in fields(FamilySpec)} - present)
        raise ConfigurationError(
            f"{where} is not a FamilySpec (a {type(spec).__name__}"
            + (f"; missing {', '.join(missing)})" if missing else ")")
        )
    problems = spec.problems()
    if problems:
        raise ConfigurationError(f"{where}: incomplete spec: {'; '.join(problems)}")
    if spec.name != point.name:
        raise ConfigurationError(f"{where}: the spec is named {spec.name!r}, not {point.name!r}")
    return spec


def _package(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown"
