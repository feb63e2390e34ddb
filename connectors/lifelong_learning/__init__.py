"""The Kozani Lifelong Learning Centre connector (family ``lifelong_learning``): REST/JSON
over mutual TLS."""

from connectors.lifelong_learning.settings import LifelongLearningConnection
from diasyndesi_sdk.family import FamilySpec

FAMILY = FamilySpec(
    name="lifelong_learning",
    connector="connectors.lifelong_learning.connector:LifelongLearningConnector",
    connection=LifelongLearningConnection,
    status="push",
    supports=frozenset({"withdrawal"}),
    sandbox="connectors.lifelong_learning.sandbox:SANDBOX",
)
"""Published through the ``diasyndesi.families`` entry point (pyproject.toml)."""
