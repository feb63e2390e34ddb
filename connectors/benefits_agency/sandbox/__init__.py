"""The benefits_agency family's sandbox as development mode starts it.

This module stays light (no web framework): the hub's ``up`` process reads it to plan
ports, secrets and connection settings; the app itself (``app.py``) is imported only by
the process that serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from diasyndesi_sdk.sandbox import Sandbox, SandboxContext


class BenefitsSandbox(Sandbox):
    """ΟΠΕΚΑ's sandbox for development mode: the WSDL and the two operations; no push (the
    hub polls ΟΠΕΚΑ)."""

    def connection(self, agency: str, url: str, state_dir: Path) -> dict[str, str]:
        return {"base_url": f"{url}/soap", "username": "diasyndesi"}

    def create_app(self, context: SandboxContext) -> Any:
        agency = context.only_agency()
        from connectors.benefits_agency.sandbox.app import BenefitsSandboxConfig, create_app

        return create_app(
            BenefitsSandboxConfig(
                username="diasyndesi",
                password=SecretStr(agency.secret),
                decision_delay_s=context.decision_delay_s,
                state_file=context.state_dir / f"{agency.id}.jsonl",
            )
        )


SANDBOX = BenefitsSandbox()
