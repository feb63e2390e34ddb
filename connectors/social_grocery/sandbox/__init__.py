"""The social_grocery family's sandbox as development mode starts it.

This module stays light (no web framework): the hub's ``up`` process reads it to plan
ports, secrets and connection settings; the app itself (``app.py``) is imported only by
the process that serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from diasyndesi_sdk.sandbox import Sandbox, SandboxContext


class SocialGrocerySandbox(Sandbox):
    """The grocery's sandbox for development mode; option ``capacity``
    (``SANDBOX_OPTIONS__SOCIAL_GROCERY__CAPACITY``, default 50 places)."""

    def connection(self, agency: str, url: str, state_dir: Path) -> dict[str, str]:
        return {"base_url": url}

    def create_app(self, context: SandboxContext) -> Any:
        agency = context.only_agency()
        from connectors.social_grocery.sandbox.app import SocialGrocerySandboxConfig, create_app

        return create_app(
            SocialGrocerySandboxConfig(
                api_key=SecretStr(agency.secret),
                capacity=int(context.options.get("capacity", 50)),
                **context.pushing_fields(),
            )
        )


SANDBOX = SocialGrocerySandbox()
