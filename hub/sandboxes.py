"""Starts the simulated agencies of embedded mode (``make run``, ``diasyndesi sandbox``,
tests, benchmarks) and tells the hub how to reach them, for whatever families are installed:
each family's plugin spec names its sandbox (``diasyndesi_sdk.sandbox.Sandbox``), and one
server per family serves every active agency of that family.

Ports: ``SANDBOX_PORTS__<FAMILY>``, else ``SANDBOX_PORT_BASE`` + the family's place in the
order the registry first names each family (8101 ΟΠΕΚΑ, 8102 ΔΥΠΑ, 8103 the grocery, 8104
the municipal services, 8105 lifelong learning with the sample registry). Secrets: the one
the operator configured (``AGENCIES__<ID>__SECRET``, so separate ``serve``/``worker``/
``sandbox`` processes agree on it), else a fresh one of the family's kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from diasyndesi_sdk.family import FamilySpec
from diasyndesi_sdk.sandbox import Sandbox, SandboxAgency, SandboxContext
from hub.errors import ConfigurationError
from hub.families import installed_families
from hub.registry import Registry
from hub.settings import AgencyConnection, Settings

if TYPE_CHECKING:
    from hub.servers import RunningServer


@dataclass(frozen=True)
class SandboxFamily:
    """One family to simulate: its spec, its sandbox and the active agencies it stands in for."""

    spec: FamilySpec
    sandbox: Sandbox
    agencies: tuple[str, ...]
    index: int

    @property
    def name(self) -> str:
        return self.spec.name


def sandbox_families(settings: Settings, registry: Registry | None = None) -> list[SandboxFamily]:
    """The installed families with a sandbox and at least one active agency, in the order
    the registry first names them (which fixes their default ports)."""
    registry = registry or Registry.load(settings.registry_dir)
    families = installed_families()
    by_family: dict[str, list[str]] = {}
    for agency in registry.agencies.values():
        spec = families.get(agency.family)
        if agency.active and spec is not None and spec.sandbox is not None:
            by_family.setdefault(agency.family, []).append(agency.id)
    return [
        SandboxFamily(families[name], _load_sandbox(families[name]), tuple(agencies), index)
        for index, (name, agencies) in enumerate(by_family.items())
    ]


def _load_sandbox(spec: FamilySpec) -> Sandbox:
    try:
        return spec.load_sandbox()
    except ConfigurationError as exc:
        if "cannot import" not in str(exc):
            raise
        raise ConfigurationError(
            f"the sandbox agencies are development tools, not part of this installation "
            f"(family {spec.name}); run them from a checkout: `make run` or "
            "`.venv/bin/diasyndesi sandbox`"
        ) from None


def sandbox_port(settings: Settings, family: SandboxFamily) -> int:
    """The configured port of ``family``'s sandbox (0: any free port)."""
    if family.name in settings.sandbox_ports:
        return settings.sandbox_ports[family.name]
    return settings.sandbox_port_base + family.index if settings.sandbox_port_base else 0


def state_dir(settings: Settings, family: SandboxFamily) -> Path:
    return settings.var_dir / "sandbox" / family.name


def configured_secret(settings: Settings, agency: str) -> str | None:
    configured = settings.agencies.get(agency)
    if configured is not None and configured.secret.get_secret_value():
        return configured.secret.get_secret_value()
    return None


def agency_env(
    settings: Settings,
    families: list[SandboxFamily],
    ports: dict[str, int],
    new_secret: Callable[[SandboxFamily], str] | None = None,
) -> dict[str, str]:
    """``AGENCIES__<ID>__*`` for the sandbox agencies, for processes started apart from the
    sandbox (``up``'s children, the bench): a fresh secret each, shared by the sandbox
    (which checks it) and the workers (which present it), and the connection fields of the
    sandbox on ``ports``. A field the operator set (e.g. a fault proxy's URL) is left as set;
    certificates are created here, before either side starts (``Sandbox.prepare``)."""
    env: dict[str, str] = {}
    for family in families:
        folder = state_dir(settings, family)
        family.sandbox.prepare(folder)
        url = f"{family.sandbox.scheme}://{settings.sandbox_host}:{ports[family.name]}"
        for agency in family.agencies:
            chosen = settings.agencies.get(agency)
            given = (chosen.model_fields_set | set(chosen.model_extra or {})) if chosen else set()
            key = f"AGENCIES__{agency.upper().replace('-', '_')}"
            if "secret" not in given and "secret_file" not in given:
                fresh = new_secret(family) if new_secret else family.sandbox.new_secret()
                env[f"{key}__SECRET"] = fresh
            for name, value in family.sandbox.connection(agency, url, folder).items():
                if name not in given:
                    env[f"{key}__{name.upper()}"] = value
    return env


def port_env(ports: dict[str, int]) -> dict[str, str]:
    """``SANDBOX_PORTS__<FAMILY>`` for every family: the sandbox process binds these."""
    return {f"SANDBOX_PORTS__{family.upper()}": str(port) for family, port in ports.items()}


@dataclass
class Sandboxes:
    servers: dict[str, RunningServer] = field(default_factory=dict)
    connections: dict[str, AgencyConnection] = field(default_factory=dict)

    async def stop(self) -> None:
        for server in self.servers.values():
            await server.stop()

    def describe(self) -> str:
        return "\n".join(f"  {name:<28} {server.url}" for name, server in self.servers.items())


async def start_sandboxes(
    settings: Settings, hub_url: str | None, agency_tokens: dict[str, str]
) -> Sandboxes:
    """One server per family with a sandbox, on its configured port (0 = any free port)."""
    from hub.servers import start_server  # uvicorn: only where a server runs, not in `up`

    started = Sandboxes()
    try:
        for family in sandbox_families(settings):
            folder = state_dir(settings, family)
            family.sandbox.prepare(folder)
            agencies = tuple(
                SandboxAgency(
                    agency,
                    configured_secret(settings, agency) or family.sandbox.new_secret(),
                    agency_tokens.get(agency),
                )
                for agency in family.agencies
            )
            context = SandboxContext(
                family=family.name,
                agencies=agencies,
                hub_url=hub_url,
                decision_delay_s=settings.sandbox_decision_delay_s,
                state_dir=folder,
                options=settings.sandbox_options.get(family.name, {}),
            )
            server = await start_server(
                family.sandbox.create_app(context),
                settings.sandbox_host,
                sandbox_port(settings, family),
                f"{family.name} sandbox",
                family.sandbox.server_tls(folder),
            )
            started.servers[family.name] = server
            for agency in agencies:
                fields = family.sandbox.connection(agency.id, server.url, folder)
                started.connections[agency.id] = AgencyConnection.model_validate(
                    {**fields, "secret": SecretStr(agency.secret)}
                )
    except BaseException:
        await started.stop()
        raise
    return started
