"""The lifelong_learning family's sandbox as development mode starts it: mutual TLS with
certificates made at the first start under the family's sandbox folder (never committed).

This module stays light (no web framework): the hub's ``up`` process reads it to plan ports,
certificates and connection settings; the app (``app.py``) is imported by the process that
serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diasyndesi_sdk.sandbox import Sandbox, SandboxContext, ServerTls


class LifelongLearningSandbox(Sandbox):
    scheme = "https"

    def prepare(self, state_dir: Path) -> None:
        if (state_dir / "tls" / "client.key").exists():
            return  # made at an earlier start
        from connectors.sandbox_kit.certs import write_dev_certs  # trustme: only when needed

        write_dev_certs(state_dir / "tls")

    def connection(self, agency: str, url: str, state_dir: Path) -> dict[str, str]:
        tls = state_dir / "tls"
        return {
            "base_url": url,
            "client_cert": str(tls / "client.pem"),
            "client_key": str(tls / "client.key"),
            "ca_file": str(tls / "ca.pem"),
        }

    def server_tls(self, state_dir: Path) -> ServerTls:
        tls = state_dir / "tls"
        return ServerTls(tls / "server.pem", tls / "server.key", ca_certs=tls / "ca.pem")

    def create_app(self, context: SandboxContext) -> Any:
        from connectors.lifelong_learning.sandbox.app import (
            LifelongLearningSandboxConfig,
            create_app,
        )

        return create_app(LifelongLearningSandboxConfig(**context.pushing_fields()))


SANDBOX = LifelongLearningSandbox()
