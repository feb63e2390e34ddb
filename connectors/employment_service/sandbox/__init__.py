"""The employment_service family's sandbox as development mode starts it.

This module stays light (no web framework): the hub's ``up`` process reads it to plan
ports, secrets and connection settings; the app itself (``app.py``) is imported only by
the process that serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from diasyndesi_sdk.sandbox import Sandbox, SandboxContext


class EmploymentSandbox(Sandbox):
    """ΔΥΠΑ's sandbox for development mode: OAuth2 client credentials, status pushed."""

    def connection(self, agency: str, url: str, state_dir: Path) -> dict[str, str]:
        return {"base_url": url, "username": "diasyndesi"}

    def create_app(self, context: SandboxContext) -> Any:
        agency = context.only_agency()
        from connectors.employment_service.sandbox.app import EmploymentSandboxConfig, create_app

        return create_app(
            EmploymentSandboxConfig(
                client_secret=SecretStr(agency.secret),
                **context.pushing_fields(),
            )
        )


SANDBOX = EmploymentSandbox()
