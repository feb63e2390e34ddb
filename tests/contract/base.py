"""The connector contract, written once and run against every installed family with its real
sandbox on loopback (FastStream's habit: one suite, one subclass per implementation).

The harness is built from the family's plugin spec alone, as the hub builds it: the sandbox
the family publishes (its app, its connection fields, its TLS), the connector class and
connection model the spec names, and a payload that is the agency's own registry mapping
applied to a realistic referral. A family's subclass, with its own tests in
``connectors/<family>/tests/test_contract.py``, only names the family and may add tests of
its own; ``test_every_family.py`` fails when an installed family has none.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest

from diasyndesi_sdk.connector import (
    Connector,
    Delivery,
    PollsStatus,
    Receipt,
    Withdrawal,
    Withdraws,
    idempotency_key,
)
from diasyndesi_sdk.family import FamilySpec
from diasyndesi_sdk.sandbox import Sandbox, SandboxAgency, SandboxContext
from hub.broker import free_port
from hub.errors import PermanentError, RetryableError
from hub.families import installed_families
from hub.mapping import Mapping, load_mapping
from hub.registry import Agency, Registry
from hub.samples import sample_referral
from hub.servers import RunningServer, start_server
from hub.settings import AgencyConnection, Settings, packaged_dir
from schemas.codes import EnrollmentStatus
from schemas.referral import Referral

REGISTRY = Registry.load(Settings().registry_dir)


def first_agency(family: str) -> Agency:
    return next(a for a in REGISTRY.agencies.values() if a.family == family and a.active)


@dataclass
class Harness:
    """One family's agency with its sandbox: how to build, feed and inspect them."""

    spec: FamilySpec
    sandbox: Sandbox
    agency: Agency
    server: RunningServer
    secret: str
    folder: Path
    mapping: Mapping

    def connection(self, **overrides: Any) -> AgencyConnection:
        fields = self.sandbox.connection(self.agency.id, self.server.url, self.folder)
        return self.spec.connection.model_validate(
            {**fields, "secret": self.secret, "timeout_s": 5.0, **overrides}
        )

    def build(self, connection: AgencyConnection) -> Connector:
        return self.spec.load_connector()(self.agency.id, connection)

    def payload(
        self,
        referral_id: str,
        *,
        programmes: list[str] | None = None,
        vulnerabilities: list[str] | None = None,
    ) -> dict[str, Any]:
        """Exactly what the hub would send: the agency's mapping applied to a referral (for
        its first two programmes unless told)."""
        municipality = next((m for m in self.agency.municipalities if m != "*"), "kozani")
        centre = next(c for c in REGISTRY.centres.values() if c.municipality == municipality)
        programmes = programmes or self.programmes()
        body = sample_referral(centre.code, programmes, seed=11, municipality=municipality)
        if vulnerabilities is not None:
            body["beneficiary"]["vulnerabilities"] = vulnerabilities
        referral = Referral.model_validate(
            {
                **body,
                "id": referral_id,
                "created_at": "2026-11-20T09:30:00+00:00",
                "municipality": municipality,
                "routed": [self.agency.id],
            }
        )
        return self.mapping.apply(referral.model_dump(mode="json"))

    @property
    def sandbox_url(self) -> str:
        """Where this agency's ``/_sandbox/*`` routes live."""
        return self.sandbox.admin_url(self.agency.id, self.server.url)

    def delivery(self, **referral: Any) -> Delivery:
        """A fresh delivery; ``referral`` as for ``payload``."""
        event_id = str(uuid.uuid4())
        referral_id = str(uuid.uuid4())
        return Delivery(
            event_id=event_id,
            referral_id=referral_id,
            agency=self.agency.id,
            idempotency_key=idempotency_key(event_id, self.agency.id),
            payload=self.payload(referral_id, **referral),
        )

    def programmes(self) -> list[str]:
        """The programmes ``payload`` asks this agency for unless told (its first two)."""
        return [code.value for code in self.agency.programmes[:2]]

    def withdrawal(
        self, delivery: Delivery, *, programmes: list[str] | None = None, whole: bool = True
    ) -> Withdrawal:
        """A fresh withdrawal of ``delivery`` (of ``programmes``, canonical codes; all of
        the delivery's unless told), as the hub builds it."""
        event_id = str(uuid.uuid4())
        return Withdrawal(
            event_id=event_id,
            referral_id=delivery.referral_id,
            agency=self.agency.id,
            idempotency_key=idempotency_key(event_id, self.agency.id),
            delivery_key=delivery.idempotency_key,
            reason="consent_withdrawn",
            programmes=tuple(self.mapping.programme_codes(programmes or self.programmes())),
            whole=whole,
            withdrawn_at=datetime.now(UTC),
        )

    async def received_entry(self, delivery: Delivery) -> dict[str, Any]:
        """The sandbox's first ``received`` entry for ``delivery``."""
        records = await self.call_sandbox("GET", "received")
        return next(r for r in records if r["idempotency_key"] == delivery.idempotency_key)

    async def call_sandbox(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"{self.sandbox_url}/_sandbox/{path}", json=body, ssl=False
            ) as response,
        ):
            assert response.status < 300, await response.text()
            return await response.json()


def personal_values(payload: Any) -> set[str]:
    """Every string of the mapped payload longer than 3 characters (names, identifiers)."""
    if isinstance(payload, dict):
        return {v for value in payload.values() for v in personal_values(value)}
    if isinstance(payload, list):
        return {v for value in payload for v in personal_values(value)}
    return {payload} if isinstance(payload, str) and len(payload) > 3 else set()


def assert_quotes_nothing_personal(error: Exception, delivery: Delivery) -> None:
    """A failure's message names the call and the cause, never a value the referral carried
    (it reaches logs, dead letters and the operators' screens)."""
    message = str(error)
    leaked = sorted(v for v in personal_values(delivery.payload) if v in message)
    assert not leaked, f"the message quotes payload values: {leaked}"


async def start_harness(family: str, folder: Path) -> Harness:
    spec = installed_families()[family]
    sandbox = spec.load_sandbox()
    agency = first_agency(family)
    sandbox.prepare(folder)
    secret = sandbox.new_secret()
    context = SandboxContext(
        family=family,
        agencies=(SandboxAgency(agency.id, secret),),
        hub_url=None,
        decision_delay_s=0,
        state_dir=folder,
    )
    server = await start_server(
        sandbox.create_app(context),
        "127.0.0.1",
        0,
        f"{family}-contract",
        sandbox.server_tls(folder),
    )
    mapping = load_mapping(packaged_dir("mappings") / agency.mapping, agency.id, family)
    return Harness(spec, sandbox, agency, server, secret, folder, mapping)


class ConnectorContract:
    """Subclass with ``family = "<name>"``; every test here holds for every family."""

    family: ClassVar[str]

    @pytest.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[Harness]:
        harness = await start_harness(self.family, tmp_path / "sandbox")
        yield harness
        await harness.server.stop()

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
        stats = await harness.call_sandbox("GET", "stats")
        assert (stats["accepted"], stats["duplicates"]) == (1, 0)

    async def test_the_idempotency_key_reaches_the_agency(
        self, harness: Harness, connector: Connector
    ) -> None:
        delivery = harness.delivery()
        await connector.deliver(delivery)
        [record] = await harness.call_sandbox("GET", "received")
        assert record["idempotency_key"] == delivery.idempotency_key

    async def test_a_repeat_with_the_same_key_has_no_second_effect(
        self, harness: Harness, connector: Connector
    ) -> None:
        delivery = harness.delivery()
        first = await connector.deliver(delivery)
        second = await connector.deliver(delivery)
        assert second.reference == first.reference
        assert second.duplicate is True
        assert (await harness.call_sandbox("GET", "stats"))["accepted"] == 1

    async def test_an_unavailable_agency_is_retryable_with_its_hint(
        self, harness: Harness, connector: Connector
    ) -> None:
        await harness.call_sandbox(
            "POST", "faults", {"fail_rate": 1.0, "status": 503, "retry_after_s": 7}
        )
        delivery = harness.delivery()
        with pytest.raises(RetryableError) as caught:
            await connector.deliver(delivery)
        assert caught.value.error_class == "http_503"
        assert caught.value.retry_after_s == 7.0
        assert_quotes_nothing_personal(caught.value, delivery)
        assert (await harness.call_sandbox("GET", "stats"))["accepted"] == 0

    async def test_delivers_once_the_fault_clears(
        self, harness: Harness, connector: Connector
    ) -> None:
        await harness.call_sandbox("POST", "faults", {"fail_rate": 1.0, "status": 503})
        delivery = harness.delivery()
        with pytest.raises(RetryableError):
            await connector.deliver(delivery)
        await harness.call_sandbox("POST", "faults", {})
        receipt = await connector.deliver(delivery)  # the same delivery, as the hub retries it
        assert receipt.reference
        assert (await harness.call_sandbox("GET", "stats"))["accepted"] == 1

    async def test_a_refusal_is_permanent(self, harness: Harness, connector: Connector) -> None:
        await harness.call_sandbox("POST", "faults", {"fail_rate": 1.0, "status": 400})
        delivery = harness.delivery()
        with pytest.raises(PermanentError) as caught:
            await connector.deliver(delivery)
        assert_quotes_nothing_personal(caught.value, delivery)
        # "http_400", or the protocol's own word for it (a SOAP Sender fault)
        assert caught.value.error_class in ("http_400", "soap_client_fault")

    @pytest.mark.parametrize("status", [401, 403])
    async def test_refused_credentials_wait_for_the_operator(
        self, harness: Harness, connector: Connector, status: int
    ) -> None:
        await harness.call_sandbox("POST", "faults", {"fail_rate": 1.0, "status": status})
        with pytest.raises(RetryableError) as caught:
            await connector.deliver(harness.delivery())
        assert caught.value.error_class == "auth_rejected"

    async def test_a_malformed_answer_is_retryable(
        self, harness: Harness, connector: Connector
    ) -> None:
        await harness.call_sandbox("POST", "faults", {"malformed_rate": 1.0})
        delivery = harness.delivery()
        with pytest.raises(RetryableError) as caught:
            await connector.deliver(delivery)
        assert caught.value.error_class == "malformed_response"
        assert_quotes_nothing_personal(caught.value, delivery)

    async def test_a_slow_agency_times_out_retryably(self, harness: Harness) -> None:
        connector = harness.build(harness.connection(timeout_s=0.3))
        await connector.start()
        try:
            await harness.call_sandbox("POST", "faults", {"latency_ms": 2000})
            with pytest.raises(RetryableError) as caught:
                await connector.deliver(harness.delivery())
            assert caught.value.error_class == "timeout"
            assert str(caught.value).endswith("timed out")
        finally:
            await connector.stop()

    async def test_an_unreachable_agency_is_retryable(self, harness: Harness) -> None:
        scheme = harness.server.url.split("://")[0]
        connector = harness.build(
            harness.connection(base_url=f"{scheme}://127.0.0.1:{free_port()}/nowhere")
        )
        await connector.start()
        try:
            with pytest.raises(RetryableError) as caught:
                await connector.deliver(harness.delivery())
            assert caught.value.error_class == "connection"
        finally:
            await connector.stop()

    async def test_status_reading_matches_the_declared_capability(
        self, harness: Harness, connector: Connector
    ) -> None:
        polls = harness.spec.status in ("poll", "both")
        assert isinstance(connector, PollsStatus) == polls, (
            f"{self.family} declares status={harness.spec.status!r}"
        )
        if not isinstance(connector, PollsStatus):
            return
        receipt = await connector.deliver(harness.delivery())
        assert receipt.reference
        report = await connector.status_of(receipt.reference)
        assert report is not None and report.reference == receipt.reference
        assert await connector.status_of("NO-SUCH-REFERENCE-1") is None

    async def test_start_and_stop_without_deliveries(self, harness: Harness) -> None:
        connector = harness.build(harness.connection())
        await connector.start()
        await connector.stop()
        assert connector.agency == harness.agency.id

    # -- withdrawal (``Withdraws``, declared as ``supports={"withdrawal"}``) ----------------

    @pytest.fixture
    def withdraws(self, harness: Harness, connector: Connector) -> Withdraws:
        """The connector as ``Withdraws``; the test is skipped for a family that declares
        no withdrawal (``test_withdrawal_matches_the_declared_capability`` holds it to that)."""
        if not isinstance(connector, Withdraws):
            pytest.skip(f"{self.family} does not declare withdrawal")
        return connector

    async def test_withdrawal_matches_the_declared_capability(
        self, harness: Harness, connector: Connector
    ) -> None:
        declared = "withdrawal" in harness.spec.supports
        assert isinstance(connector, Withdraws) == declared, (
            f"{self.family} declares supports={sorted(harness.spec.supports)}"
        )

    async def test_withdraws_a_delivered_referral(
        self, harness: Harness, connector: Connector, withdraws: Withdraws
    ) -> None:
        delivery = harness.delivery()
        receipt = await connector.deliver(delivery)
        withdrawn = await withdraws.withdraw(harness.withdrawal(delivery))
        assert isinstance(withdrawn, Receipt)
        assert withdrawn.reference == receipt.reference
        assert withdrawn.duplicate is False
        assert withdrawn.status in (EnrollmentStatus.WITHDRAWN, None)
        entry = await harness.received_entry(delivery)
        assert entry["withdrawn_at"] is not None
        [call] = await harness.call_sandbox("GET", "withdrawals")
        assert (call["delivery_key"], call["known"], call["whole"]) == (
            delivery.idempotency_key,
            True,
            True,
        )

    async def test_a_repeated_withdrawal_has_no_second_effect(
        self, harness: Harness, connector: Connector, withdraws: Withdraws
    ) -> None:
        delivery = harness.delivery()
        await connector.deliver(delivery)
        withdrawal = harness.withdrawal(delivery)
        first = await withdraws.withdraw(withdrawal)
        second = await withdraws.withdraw(withdrawal)
        assert second.reference == first.reference
        assert second.duplicate is True
        calls = await harness.call_sandbox("GET", "withdrawals")
        assert [c["duplicate"] for c in calls] == [False, True]
        assert {c["withdrawal_key"] for c in calls} == {withdrawal.idempotency_key}

    async def test_a_withdrawal_that_overtakes_the_delivery_is_kept(
        self, harness: Harness, connector: Connector, withdraws: Withdraws
    ) -> None:
        """The withdrawal reaches the agency first (the delivery still on a retry topic):
        the agency takes it, and the referral arriving later is never active."""
        delivery = harness.delivery()
        early = await withdraws.withdraw(harness.withdrawal(delivery))
        assert early.reference is None
        assert early.duplicate is False
        late = await connector.deliver(delivery)
        assert late.reference
        assert late.status in (EnrollmentStatus.WITHDRAWN, None)
        entry = await harness.received_entry(delivery)
        assert entry["withdrawn_at"] is not None
        [call] = await harness.call_sandbox("GET", "withdrawals")
        assert call["known"] is False

    async def test_a_partial_withdrawal_leaves_the_case_open(
        self, harness: Harness, connector: Connector, withdraws: Withdraws
    ) -> None:
        delivery = harness.delivery()
        await connector.deliver(delivery)
        first = harness.programmes()[:1]
        withdrawal = harness.withdrawal(delivery, programmes=first, whole=False)
        await withdraws.withdraw(withdrawal)
        entry = await harness.received_entry(delivery)
        assert entry["withdrawn_at"] is None
        assert entry["withdrawn_programmes"] == list(withdrawal.programmes)

    async def test_a_withdrawal_to_an_unavailable_agency_is_retryable(
        self, harness: Harness, connector: Connector, withdraws: Withdraws
    ) -> None:
        delivery = harness.delivery()
        await connector.deliver(delivery)
        await harness.call_sandbox(
            "POST", "faults", {"fail_rate": 1.0, "status": 503, "retry_after_s": 3}
        )
        with pytest.raises(RetryableError) as caught:
            await withdraws.withdraw(harness.withdrawal(delivery))
        assert caught.value.error_class == "http_503"
        assert_quotes_nothing_personal(caught.value, delivery)
        await harness.call_sandbox("POST", "faults", {})
        assert await harness.call_sandbox("GET", "withdrawals") == []

    async def test_a_refused_withdrawal_is_permanent(
        self, harness: Harness, connector: Connector, withdraws: Withdraws
    ) -> None:
        delivery = harness.delivery()
        await connector.deliver(delivery)
        await harness.call_sandbox("POST", "faults", {"fail_rate": 1.0, "status": 400})
        with pytest.raises(PermanentError) as caught:
            await withdraws.withdraw(harness.withdrawal(delivery))
        assert caught.value.error_class in ("http_400", "soap_client_fault")
        assert_quotes_nothing_personal(caught.value, delivery)
