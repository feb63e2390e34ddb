"""A family's simulated agency, as development mode, the tests and the benchmarks start it.

Each family's sandbox is one server for all of that family's agencies (the municipal one
serves every municipality under ``/<agency>``). The hub decides its port and secrets and
asks the family only what is the family's: the app, the connection settings the hub's
workers use to reach it, and TLS material if the protocol needs some.

Sandboxes are for development: they live in ``connectors/<family>/sandbox/`` and stay out
of the production wheel; this interface is small and has no web-framework import.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diasyndesi_sdk.errors import ConfigurationError

__all__ = ["Sandbox", "SandboxAgency", "SandboxContext", "ServerTls"]


@dataclass(frozen=True)
class SandboxAgency:
    """One agency the sandbox stands in for, with the secret both sides were given."""

    id: str
    secret: str
    hub_token: str | None = None


@dataclass(frozen=True)
class SandboxContext:
    family: str
    agencies: tuple[SandboxAgency, ...]
    hub_url: str | None
    """Where to push statuses (None: do not push)."""
    decision_delay_s: float
    state_dir: Path
    """This family's folder under ``VAR_DIR/sandbox``: journals, certificates."""
    options: Mapping[str, str] = field(default_factory=dict)
    """``SANDBOX_OPTIONS__<FAMILY>__<NAME>``, for knobs of one family (grocery capacity)."""

    def only_agency(self) -> SandboxAgency:
        """The one agency a single-tenant sandbox stands in for."""
        if len(self.agencies) != 1:
            names = ", ".join(a.id for a in self.agencies) or "none"
            raise ConfigurationError(f"the {self.family} sandbox serves one agency, not {names}")
        return self.agencies[0]

    def pushing_fields(self) -> dict[str, Any]:
        """The fields every single-agency pushing sandbox's config takes (``agency_id``,
        ``hub_url``, ``hub_token``, ``decision_delay_s``, ``state_file``), for the one agency."""
        agency = self.only_agency()
        return {
            "agency_id": agency.id,
            "hub_url": self.hub_url,
            "hub_token": agency.hub_token,
            "decision_delay_s": self.decision_delay_s,
            "state_file": self.state_dir / f"{agency.id}.jsonl",
        }


@dataclass(frozen=True)
class ServerTls:
    """TLS for a sandbox server. With ``ca_certs`` the server asks every client for a
    certificate and verifies one that is presented against that CA (OpenSSL's
    ``CERT_OPTIONAL``); the app decides which routes refuse a client without one (the
    agency API does, ``/_sandbox/*`` does not)."""

    certfile: Path
    keyfile: Path
    ca_certs: Path | None = None


class Sandbox(ABC):
    """What a family's sandbox module publishes (an instance, named by ``FamilySpec.sandbox``)."""

    scheme = "http"

    def new_secret(self) -> str:
        """A fresh secret of the kind this family's agencies use (an API key by default)."""
        return secrets.token_urlsafe(24)

    def prepare(self, state_dir: Path) -> None:
        """Create what both the sandbox and the hub's workers need before either starts
        (e.g. test certificates); called once, by the process that plans the others."""
        return None  # most families need nothing

    @abstractmethod
    def connection(self, agency: str, url: str, state_dir: Path) -> dict[str, str]:
        """The ``AgencyConnection`` fields (besides the secret) for reaching ``agency`` on the
        sandbox at ``url`` (``https://`` when ``server_tls`` gives TLS): at least
        ``base_url``; with mutual TLS also the client certificate's paths."""

    @abstractmethod
    def create_app(self, context: SandboxContext) -> Any:
        """The ASGI app serving every agency of ``context``."""

    def admin_url(self, agency: str, url: str) -> str:
        """Where ``agency``'s ``/_sandbox/*`` routes (received, stats, faults) are on the
        sandbox at ``url``: its root, unless the sandbox hosts agencies under prefixes."""
        return url

    def server_tls(self, state_dir: Path) -> ServerTls | None:
        """TLS for the sandbox server (None: plain HTTP on loopback)."""
        return None
