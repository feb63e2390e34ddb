"""The connector contract, written once and run against every connector with its real
sandbox on loopback (FastStream's habit: one suite, one subclass per implementation).

A subclass provides a ``harness`` fixture; the tests here hold for every agency family.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from diasyndesi_sdk.connector import Connector, Delivery, Receipt, idempotency_key
from hub.broker import free_port
from hub.errors import PermanentError, RetryableError
from hub.servers import RunningServer
from hub.settings import AgencyConnection


class Harness(ABC):
    """One connector family with its sandbox: how to build, feed and inspect them."""

    agency: str
    server: RunningServer

    @abstractmethod
    def connection(self, **overrides: Any) -> AgencyConnection: ...

    @abstractmethod
    def build(self, connection: AgencyConnection) -> Connector: ...

    @abstractmethod
    def payload(self, referral_id: str) -> dict[str, Any]:
        """A mapped payload as the hub would send it (the output of the agency's mapping)."""

    @property
    def sandbox_url(self) -> str:
        """Where this agency's ``/_sandbox/*`` routes live."""
        return self.server.url

    def delivery(self) -> Delivery:
        event_id = str(uuid.uuid4())
        referral_id = str(uuid.uuid4())
        return Delivery(
            event_id=event_id,
            referral_id=referral_id,
            agency=self.agency,
            idempotency_key=idempotency_key(event_id, self.agency),
            payload=self.payload(referral_id),
        )

    async def sandbox(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"{self.sandbox_url}/_sandbox/{path}", json=body) as r,
        ):
            assert r.status < 300, await r.text()
            return await r.json()


class ConnectorContract:
    """Subclass and provide ``harness`` (an async fixture yielding a started Harness)."""

    @pytest.fixture
    async def connector(self, harness: Harness) -> AsyncIterator[Connector]:
        connector = harness.build(harness.connection())
        await connector.start()
        yield connector
        await connector.stop()

    async def test_delivers_and_returns_the_agency_reference(
        self, harness: Harness, connector: Connector
    ) -> None:
        receipt = await connector.deliver(harness.delivery())
        assert isinstance(receipt, Receipt)
        assert receipt.reference
        assert receipt.duplicate is False
        stats = await harness.sandbox("GET", "stats")
        assert (stats["accepted"], stats["duplicates"]) == (1, 0)

    async def test_a_repeat_with_the_same_key_has_no_second_effect(
        self, harness: Harness, connector: Connector
    ) -> None:
        delivery = harness.delivery()
        first = await connector.deliver(delivery)
        second = await connector.deliver(delivery)
        assert second.reference == first.reference
        assert second.duplicate is True
        assert (await harness.sandbox("GET", "stats"))["accepted"] == 1

    async def test_an_unavailable_agency_is_retryable(
        self, harness: Harness, connector: Connector
    ) -> None:
        await harness.sandbox("POST", "faults", {"fail_rate": 1.0, "status": 503})
        with pytest.raises(RetryableError) as caught:
            await connector.deliver(harness.delivery())
        assert caught.value.error_class
        assert (await harness.sandbox("GET", "stats"))["accepted"] == 0

    async def test_a_refusal_is_permanent(self, harness: Harness, connector: Connector) -> None:
        await harness.sandbox("POST", "faults", {"fail_rate": 1.0, "status": 400})
        with pytest.raises(PermanentError):
            await connector.deliver(harness.delivery())

    async def test_an_unreachable_agency_is_retryable(self, harness: Harness) -> None:
        connector = harness.build(
            harness.connection(base_url=f"http://127.0.0.1:{free_port()}/nowhere")
        )
        await connector.start()
        try:
            with pytest.raises(RetryableError):
                await connector.deliver(harness.delivery())
        finally:
            await connector.stop()

    async def test_start_and_stop_without_deliveries(self, harness: Harness) -> None:
        connector = harness.build(harness.connection())
        await connector.start()
        await connector.stop()
        assert connector.agency == harness.agency
