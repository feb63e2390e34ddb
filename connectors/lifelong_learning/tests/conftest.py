"""The lifelong-learning sandbox served on loopback over real TLS with certificates made
for the session, a fake hub for its status pushes, and connectors pointed at it."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI

from connectors.lifelong_learning.connector import LifelongLearningConnector
from connectors.lifelong_learning.sandbox.app import LifelongLearningSandboxConfig, create_app
from connectors.lifelong_learning.settings import LifelongLearningConnection
from connectors.sandbox_kit.certs import CertPair, DevCerts, write_dev_certs
from diasyndesi_sdk.connector import Delivery, idempotency_key
from diasyndesi_sdk.sandbox import ServerTls
from hub.servers import RunningServer, start_server
from tests.fake_hub import FakeHub
from tests.family_testing import started_connectors

AGENCY = "kozani-lifelong-learning"
HUB_BEARER = secrets.token_hex(8)
CAPACITY, REJECT_EVERY = 2, 3  # enrolments 1, 2 accepted; 3 rejected; 4, 5 waitlisted


def payload(referral_id: str) -> dict[str, Any]:
    """What mappings/kozani-lifelong-learning.yaml makes of a referral (Greek as UTF-8)."""
    return {
        "hub_referral_id": referral_id,
        "referring_centre": "KK-KOZANI",
        "courses": ["DIGITAL_SKILLS", "GREEK_AS_A_SECOND_LANGUAGE"],
        "learner": {"given_name": "Αμίνα", "family_name": "Χαλίλ", "municipality": "kozani"},
    }


def delivery(n: int = 1, body: dict[str, Any] | None = None) -> Delivery:
    event_id, referral_id = f"{n:08d}-2222-4333-8444-555555555555", f"ref-{n}"
    return Delivery(
        event_id,
        referral_id,
        AGENCY,
        idempotency_key(event_id, AGENCY),
        body if body is not None else payload(referral_id),
    )


@dataclass
class Sandbox:
    app: FastAPI
    server: RunningServer
    ca_file: Path

    def stats(self) -> dict[str, int]:
        return self.app.state.ledger.stats()  # type: ignore[no-any-return]

    async def call(self, method: str, path: str, cert: CertPair | None = None, **kw: Any) -> Any:
        """``(status, JSON)`` of one call trusting the dev CA, with ``cert`` if given."""
        tls = ssl.create_default_context(cafile=self.ca_file)
        if cert is not None:
            tls.load_cert_chain(*cert)
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.server.url + path, ssl=tls, **kw) as response,
        ):
            return response.status, await response.json()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return write_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def sandbox(certs: DevCerts, hub: FakeHub, tmp_path: Path) -> AsyncIterator[Sandbox]:
    config = LifelongLearningSandboxConfig(
        hub_url=hub.url,
        hub_token=HUB_BEARER,
        capacity=CAPACITY,
        reject_every=REJECT_EVERY,
        decision_delay_s=0.1,
        state_file=tmp_path / "kdbm.jsonl",
    )
    app = create_app(config)
    pair = certs.server
    tls = ServerTls(pair.cert, pair.key, ca_certs=certs.ca_file)
    server = await start_server(app, "127.0.0.1", 0, "kdbm", tls)
    yield Sandbox(app, server, certs.ca_file)
    await server.stop()


ConnectorFactory = Callable[..., Awaitable[LifelongLearningConnector]]


@pytest.fixture
async def make_connector(sandbox: Sandbox, certs: DevCerts) -> AsyncIterator[ConnectorFactory]:
    def build(client: CertPair | None = None, **overrides: Any) -> LifelongLearningConnector:
        pair = client or certs.client
        settings = {"base_url": sandbox.server.url, "timeout_s": 5, "ca_file": certs.ca_file}
        connection = LifelongLearningConnection.model_validate(
            {**settings, "client_cert": pair.cert, "client_key": pair.key, **overrides}
        )
        return LifelongLearningConnector(AGENCY, connection)

    async with started_connectors(build) as factory:
        yield factory
