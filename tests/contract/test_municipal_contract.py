"""The connector contract, held by the municipal social service connector and its sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.municipal_social_service.connector import MunicipalSocialServiceConnector
from connectors.municipal_social_service.sandbox.app import MunicipalSandboxConfig, create_app
from diasyndesi_sdk.connector import Connector
from diasyndesi_sdk.webhooks import new_secret
from hub.servers import start_server
from hub.settings import AgencyConnection
from tests.contract.base import ConnectorContract, Harness

SECRET = new_secret()


class MunicipalHarness(Harness):
    agency = "kozani-social-service"

    @property
    def sandbox_url(self) -> str:
        return f"{self.server.url}/{self.agency}"

    def connection(self, **overrides: Any) -> AgencyConnection:
        settings: dict[str, Any] = {"base_url": self.sandbox_url, "secret": SECRET}
        return AgencyConnection.model_validate({**settings, **overrides})

    def build(self, connection: AgencyConnection) -> Connector:
        return MunicipalSocialServiceConnector(self.agency, connection)

    def payload(self, referral_id: str) -> dict[str, Any]:
        return {
            "hub_referral_id": referral_id,
            "services": ["HELP_AT_HOME"],
            "vulnerabilities": ["elderly_living_alone"],
            "notes": "free text",
        }


class TestMunicipalSocialServiceContract(ConnectorContract):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        config = MunicipalSandboxConfig(secrets={"kozani-social-service": SECRET})
        harness = MunicipalHarness()
        harness.server = await start_server(create_app(config), "127.0.0.1", 0, "municipal")
        yield harness
        await harness.server.stop()
