"""Municipal social service connector: REST/JSON signed per Standard Webhooks."""

from diasyndesi_sdk.family import FamilySpec, Minimisation

FAMILY = FamilySpec(
    name="municipal_social_service",
    connector="connectors.municipal_social_service.connector:MunicipalSocialServiceConnector",
    status="push",
    minimisation=Minimisation(notes=True, special_categories="all"),
    supports=frozenset({"withdrawal"}),
    sandbox="connectors.municipal_social_service.sandbox:SANDBOX",
)
"""Published through the ``diasyndesi.families`` entry point (pyproject.toml)."""
