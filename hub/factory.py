"""Builds the connector for an agency from its registry entry and the settings."""

from __future__ import annotations

from connectors.base import Connector
from connectors.employment_service.connector import EmploymentServiceConnector
from hub.errors import ConfigurationError
from hub.registry import Agency
from hub.settings import Settings


def build_connector(agency: Agency, settings: Settings) -> Connector:
    if agency.family == "employment_service":
        if not settings.dypa_base_url or not settings.dypa_client_secret.get_secret_value():
            raise ConfigurationError(
                f"agency {agency.id}: set DYPA_BASE_URL and DYPA_CLIENT_SECRET"
            )
        return EmploymentServiceConnector(
            agency.id,
            base_url=settings.dypa_base_url,
            client_id=settings.dypa_client_id,
            client_secret=settings.dypa_client_secret.get_secret_value(),
            timeout_s=settings.agency_timeout_s,
            max_connections=settings.agency_concurrency * 2,
        )
    raise ConfigurationError(f"agency {agency.id}: no connector for family {agency.family} yet")
