"""Builds the connector for an agency from its registry entry and its connection settings."""

from __future__ import annotations

from connectors.benefits_agency.connector import BenefitsAgencyConnector
from connectors.employment_service.connector import EmploymentServiceConnector
from connectors.municipal_social_service.connector import MunicipalSocialServiceConnector
from connectors.social_grocery.connector import SocialGroceryConnector
from diasyndesi_sdk.connector import Connector
from hub.errors import ConfigurationError
from hub.registry import Agency
from hub.settings import AgencyConnection, Settings

CONNECTOR_CLASSES: dict[str, type[Connector]] = {
    "benefits_agency": BenefitsAgencyConnector,
    "employment_service": EmploymentServiceConnector,
    "social_grocery": SocialGroceryConnector,
    "municipal_social_service": MunicipalSocialServiceConnector,
}


def build_connector(agency: Agency, settings: Settings) -> Connector:
    connection = settings.agencies.get(agency.id, AgencyConnection())
    if not connection.base_url:
        key = agency.id.upper().replace("-", "_")
        raise ConfigurationError(f"agency {agency.id}: set AGENCIES__{key}__BASE_URL and __SECRET")
    cls = CONNECTOR_CLASSES.get(agency.family)
    if cls is None:
        raise ConfigurationError(f"agency {agency.id}: no connector for family {agency.family}")
    return cls(agency.id, connection, max_connections=settings.agency_concurrency * 2)
