"""The connector contract, held by the social grocery connector and its sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.social_grocery.connector import SocialGroceryConnector
from connectors.social_grocery.sandbox.app import SocialGrocerySandboxConfig, create_app
from diasyndesi_sdk.connector import Connector
from hub.servers import start_server
from hub.settings import AgencyConnection
from tests.contract.base import ConnectorContract, Harness

API_KEY = "grocery-contract-key"


class GroceryHarness(Harness):
    agency = "kozani-social-grocery"

    def connection(self, **overrides: Any) -> AgencyConnection:
        settings: dict[str, Any] = {"base_url": self.server.url, "secret": API_KEY}
        return AgencyConnection.model_validate({**settings, **overrides})

    def build(self, connection: AgencyConnection) -> Connector:
        return SocialGroceryConnector(self.agency, connection)

    def payload(self, referral_id: str) -> dict[str, Any]:
        return {
            "external_id": referral_id,
            "services": ["GROCERY"],
            "household": {"first_name": "Evangelia", "last_name": "Papadopoulou"},
        }


class TestSocialGroceryContract(ConnectorContract):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        app = create_app(SocialGrocerySandboxConfig(api_key=API_KEY, decision_delay_s=0))
        harness = GroceryHarness()
        harness.server = await start_server(app, "127.0.0.1", 0, "grocery-contract")
        yield harness
        await harness.server.stop()
