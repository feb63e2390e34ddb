"""ΟΠΕΚΑ (benefits agency) connector: SOAP 1.2 + WS-Security over a vendored WSDL."""

from diasyndesi_sdk.family import FamilySpec, Minimisation

FAMILY = FamilySpec(
    name="benefits_agency",
    connector="connectors.benefits_agency.connector:BenefitsAgencyConnector",
    status="poll",
    minimisation=Minimisation(afm=True, special_categories="disability_allowance_only"),
    supports=frozenset({"withdrawal"}),
    sandbox="connectors.benefits_agency.sandbox:SANDBOX",
)
"""Published through the ``diasyndesi.families`` entry point (pyproject.toml)."""
