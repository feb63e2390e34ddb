"""Builds the connector for an agency from its registry entry, its family's plugin spec and
its connection settings (``AGENCIES__<ID>__*``, validated by the family's own model)."""

from __future__ import annotations

from pydantic import ValidationError

from diasyndesi_sdk.connector import Connector
from hub.errors import ConfigurationError
from hub.families import family_spec
from hub.registry import Agency
from hub.settings import AgencyConnection, Settings


def build_connector(agency: Agency, settings: Settings) -> Connector:
    connection = settings.agencies.get(agency.id, AgencyConnection())
    key = agency.id.upper().replace("-", "_")
    if not connection.base_url:
        raise ConfigurationError(f"agency {agency.id}: set AGENCIES__{key}__BASE_URL and __SECRET")
    spec = family_spec(agency.family)
    try:
        typed = spec.connection.model_validate(connection.model_dump(exclude={"secret_file"}))
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"]).upper()
        raise ConfigurationError(
            f"agency {agency.id}: AGENCIES__{key}__{field}: {first['msg']}"
        ) from None
    cls = spec.load_connector()
    return cls(agency.id, typed, max_connections=settings.agency_concurrency * 2)
