"""The connector contract, held by the social grocery connector and its sandbox (API key;
Latin characters only, so the mapping's transliteration is exercised by every test)."""

from __future__ import annotations

from tests.contract.base import ConnectorContract


class TestSocialGroceryContract(ConnectorContract):
    family = "social_grocery"
