"""The Kozani social grocery connector (family ``social_grocery``): REST/JSON, API key."""

from diasyndesi_sdk.family import FamilySpec, Minimisation

FAMILY = FamilySpec(
    name="social_grocery",
    connector="connectors.social_grocery.connector:SocialGroceryConnector",
    status="push",
    minimisation=Minimisation(),
    supports=frozenset({"withdrawal"}),
    sandbox="connectors.social_grocery.sandbox:SANDBOX",
)
"""Published through the ``diasyndesi.families`` entry point (pyproject.toml)."""
