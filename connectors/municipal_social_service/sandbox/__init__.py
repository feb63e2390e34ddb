"""The municipal_social_service family's sandbox as development mode starts it.

This module stays light (no web framework): the hub's ``up`` process reads it to plan
ports, secrets and connection settings; the app itself (``app.py``) is imported only by
the process that serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from diasyndesi_sdk.sandbox import Sandbox, SandboxContext
from diasyndesi_sdk.webhooks import new_secret


class MunicipalSandbox(Sandbox):
    """Every municipality's social service on one server, each under ``/<agency>``; the
    secrets are Standard Webhooks signing secrets."""

    def new_secret(self) -> str:
        return new_secret()

    def connection(self, agency: str, url: str, state_dir: Path) -> dict[str, str]:
        return {"base_url": f"{url}/{agency}"}

    def admin_url(self, agency: str, url: str) -> str:
        return f"{url}/{agency}"

    def create_app(self, context: SandboxContext) -> Any:
        from connectors.municipal_social_service.sandbox.app import (
            MunicipalSandboxConfig,
            create_app,
        )

        return create_app(
            MunicipalSandboxConfig(
                secrets={a.id: SecretStr(a.secret) for a in context.agencies},
                hub_url=context.hub_url,
                decision_delay_s=context.decision_delay_s,
                state_dir=context.state_dir,
            )
        )


SANDBOX = MunicipalSandbox()
