"""Starts the simulated agencies of embedded mode (``make run``, ``diasyndesi sandbox``,
tests, benchmarks) and tells the hub how to reach them. Each agency's secret is the one the
operator configured (``AGENCIES__<ID>__SECRET``, so separate ``serve``/``worker``/``sandbox``
processes can agree on it) or else a fresh one each start."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from pydantic import SecretStr

from connectors.sandboxes import (
    benefits_agency,
    employment_service,
    municipal_social_service,
    social_grocery,
)
from diasyndesi_sdk.webhooks import new_secret
from hub.servers import RunningServer, start_server
from hub.settings import AgencyConnection, Settings


@dataclass
class Sandboxes:
    servers: dict[str, RunningServer] = field(default_factory=dict)
    connections: dict[str, AgencyConnection] = field(default_factory=dict)

    async def stop(self) -> None:
        for server in self.servers.values():
            await server.stop()

    def describe(self) -> str:
        return "\n".join(f"  {name:<28} {server.url}" for name, server in self.servers.items())


def _secret(settings: Settings, agency: str, fresh: str) -> str:
    configured = settings.agencies.get(agency)
    if configured is not None and configured.secret.get_secret_value():
        return configured.secret.get_secret_value()
    return fresh


async def start_sandboxes(
    settings: Settings, hub_url: str | None, agency_tokens: dict[str, str]
) -> Sandboxes:
    """One server per agency family on the configured ports (0 = any free port)."""
    state = settings.var_dir / "sandbox"
    delay = settings.sandbox_decision_delay_s
    host = settings.sandbox_host
    started = Sandboxes()
    try:
        opeka_password = _secret(settings, "opeka", secrets.token_urlsafe(24))
        app = benefits_agency.create_app(
            benefits_agency.BenefitsSandboxConfig(
                username="diasyndesi",
                password=SecretStr(opeka_password),
                decision_delay_s=delay,
                state_file=state / "opeka.jsonl",
            )
        )
        server = await start_server(app, host, settings.sandbox_benefits_port, "opeka sandbox")
        started.servers["opeka"] = server
        started.connections["opeka"] = AgencyConnection(
            base_url=f"{server.url}/soap", username="diasyndesi", secret=SecretStr(opeka_password)
        )

        dypa_secret = _secret(settings, "dypa", secrets.token_urlsafe(24))
        app = employment_service.create_app(
            employment_service.EmploymentSandboxConfig(
                client_secret=dypa_secret,
                hub_url=hub_url,
                hub_token=agency_tokens.get("dypa"),
                decision_delay_s=delay,
                state_file=state / "dypa.jsonl",
            )
        )
        server = await start_server(app, host, settings.sandbox_employment_port, "dypa sandbox")
        started.servers["dypa"] = server
        started.connections["dypa"] = AgencyConnection(
            base_url=server.url, username="diasyndesi", secret=SecretStr(dypa_secret)
        )

        grocery = "kozani-social-grocery"
        grocery_key = _secret(settings, grocery, secrets.token_urlsafe(24))
        app = social_grocery.create_app(
            social_grocery.SocialGrocerySandboxConfig(
                api_key=grocery_key,
                capacity=settings.sandbox_grocery_capacity,
                hub_url=hub_url,
                hub_token=agency_tokens.get(grocery),
                decision_delay_s=delay,
                state_file=state / f"{grocery}.jsonl",
            )
        )
        server = await start_server(app, host, settings.sandbox_grocery_port, "grocery sandbox")
        started.servers[grocery] = server
        started.connections[grocery] = AgencyConnection(
            base_url=server.url, secret=SecretStr(grocery_key)
        )

        municipal = ["kozani-social-service", "karpenisi-social-service"]
        signing = {agency: _secret(settings, agency, new_secret()) for agency in municipal}
        app = municipal_social_service.create_app(
            municipal_social_service.MunicipalSandboxConfig(
                secrets={agency: SecretStr(secret) for agency, secret in signing.items()},
                hub_url=hub_url,
                decision_delay_s=delay,
                state_dir=state / "municipal",
            )
        )
        server = await start_server(app, host, settings.sandbox_municipal_port, "municipal sandbox")
        started.servers["municipal social services"] = server
        for agency, secret in signing.items():
            started.connections[agency] = AgencyConnection(
                base_url=f"{server.url}/{agency}", secret=SecretStr(secret)
            )
    except BaseException:
        await started.stop()
        raise
    return started
