"""ΔΥΠΑ (public employment service) connector: REST/JSON behind OAuth2 client credentials."""

from diasyndesi_sdk.family import FamilySpec, Minimisation

FAMILY = FamilySpec(
    name="employment_service",
    connector="connectors.employment_service.connector:EmploymentServiceConnector",
    status="push",
    minimisation=Minimisation(),
    supports=frozenset({"withdrawal"}),
    sandbox="connectors.employment_service.sandbox:SANDBOX",
)
"""Published through the ``diasyndesi.families`` entry point (pyproject.toml)."""
