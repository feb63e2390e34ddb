"""The connector contract, held by the lifelong-learning connector and its sandbox: REST/JSON
over mutual TLS, with certificates made for the test."""

from __future__ import annotations

from tests.contract.base import ConnectorContract


class TestLifelongLearningContract(ConnectorContract):
    family = "lifelong_learning"
