"""The connector contract, held by the municipal social service connector and its sandbox
(Standard Webhooks signatures, one server for every municipality under ``/<agency>``)."""

from __future__ import annotations

from tests.contract.base import ConnectorContract


class TestMunicipalSocialServiceContract(ConnectorContract):
    family = "municipal_social_service"
