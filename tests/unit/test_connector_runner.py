"""The hub side of a connector with an in-memory bus and a scripted fake connector:
mapping before delivery, the one retry policy, classification, outcome events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.base import Connector, Delivery, Receipt, idempotency_key
from hub.bus import MemoryPublisher
from hub.connector_runner import ConnectorRunner
from hub.errors import PermanentError, RetryableError
from hub.events import Event, decode, encode
from hub.mapping import load_mapping
from hub.metrics import HubMetrics
from hub.samples import sample_referral
from hub.settings import AgencyConnection, RetrySettings
from schemas.events import (
    DELIVERY_FAILED,
    DELIVERY_SUCCEEDED,
    REFERRAL_SUBMITTED,
    TOPIC_DELIVERIES,
    TOPIC_REFERRALS,
    DeliveryOutcome,
    ReferralSubmitted,
)
from schemas.referral import Referral

ROOT = Path(__file__).resolve().parents[2]
REFERRAL_ID = "00000000-0000-4000-8000-0000000000aa"


class ScriptedConnector(Connector):
    """Raises the scripted errors in order, then succeeds."""

    family = "fake"

    def __init__(self, script: list[Exception]) -> None:
        super().__init__("dypa", AgencyConnection())
        self.script = list(script)
        self.calls: list[Delivery] = []

    async def start(self) -> None:
        pass

    async def deliver(self, delivery: Delivery) -> Receipt:
        self.calls.append(delivery)
        if self.script:
            raise self.script.pop(0)
        return Receipt(reference="DYPA-7")

    async def stop(self) -> None:
        pass


def submitted_event(routed: list[str] | None = None) -> Event:
    referral = Referral(
        **sample_referral(seed=42),
        id=REFERRAL_ID,
        created_at=datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
        municipality="kozani",
        routed=routed or ["dypa"],
    )
    record = encode(
        TOPIC_REFERRALS,
        REFERRAL_SUBMITTED,
        ReferralSubmitted(referral=referral),
        key=referral.id,
        event_id="11111111-1111-4111-8111-111111111111",
    )
    return decode(record.headers, record.key, record.value)


async def no_sleep(_: float) -> None:
    return None


def runner(
    script: list[Exception], attempts: int = 3
) -> tuple[ConnectorRunner, MemoryPublisher, ScriptedConnector, HubMetrics]:
    connector = ScriptedConnector(script)
    publisher = MemoryPublisher()
    metrics = HubMetrics()
    mapping = load_mapping(ROOT / "mappings" / "dypa.yaml", "dypa")
    retry = RetrySettings(attempts=attempts, initial_s=0.001, max_s=0.01, jitter_s=0)
    return (
        ConnectorRunner(connector, mapping, publisher, retry, metrics, sleep=no_sleep),
        publisher,
        connector,
        metrics,
    )


def outcomes(publisher: MemoryPublisher) -> list[tuple[str, DeliveryOutcome]]:
    result = []
    for record in publisher.records:
        assert record.topic == TOPIC_DELIVERIES
        assert record.key == REFERRAL_ID.encode()
        event = decode(record.headers, record.key, record.value)
        assert isinstance(event.data, DeliveryOutcome)
        result.append((event.type, event.data))
    return result


async def test_delivers_the_mapped_payload_with_a_deterministic_key() -> None:
    hub_runner, publisher, connector, _ = runner([])
    event = submitted_event()
    outcome = await hub_runner.handle(event)
    assert outcome is not None and outcome.succeeded and outcome.reference == "DYPA-7"
    [call] = connector.calls
    assert call.idempotency_key == idempotency_key(event.id, "dypa")
    assert call.payload["hub_referral_id"] == REFERRAL_ID
    assert "afm" not in str(call.payload)
    assert call.payload["services"] == ["JOBSEEKER_REGISTRATION", "COUNSELLING"]
    [(kind, data)] = outcomes(publisher)
    assert kind == DELIVERY_SUCCEEDED
    assert (data.attempts, data.submitted_event_id) == (1, event.id)


async def test_retryable_failures_are_retried_by_the_hub_policy() -> None:
    errors: list[Exception] = [
        RetryableError("x", error_class="http_503"),
        RetryableError("x", error_class="timeout"),
    ]
    hub_runner, publisher, connector, metrics = runner(errors, attempts=3)
    outcome = await hub_runner.handle(submitted_event())
    assert outcome is not None and outcome.succeeded
    assert outcome.attempts == 3
    assert len({c.idempotency_key for c in connector.calls}) == 1
    assert [kind for kind, _ in outcomes(publisher)] == [DELIVERY_SUCCEEDED]
    retries = metrics.registry.get_sample_value(
        "diasyndesi_delivery_retries_total", {"connector": "dypa", "error_class": "http_503"}
    )
    assert retries == 1.0


async def test_permanent_failure_is_not_retried_and_is_recorded() -> None:
    hub_runner, publisher, connector, _ = runner([PermanentError("no", error_class="http_400")])
    outcome = await hub_runner.handle(submitted_event())
    assert outcome is not None and not outcome.succeeded and outcome.permanent
    assert len(connector.calls) == 1
    [(kind, data)] = outcomes(publisher)
    assert kind == DELIVERY_FAILED
    assert (data.error_class, data.attempts) == ("http_400", 1)


async def test_exhausted_retries_publish_retrying_then_keep_going(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    errors: list[Exception] = [RetryableError("x", error_class="http_503") for _ in range(3)]
    hub_runner, publisher, connector, _ = runner(errors, attempts=2)
    outcome = await hub_runner.handle(submitted_event())
    assert outcome is not None and outcome.succeeded
    assert len(connector.calls) == 4
    kinds = [(kind, data.permanent, data.attempts) for kind, data in outcomes(publisher)]
    assert kinds == [(DELIVERY_FAILED, False, 2), (DELIVERY_SUCCEEDED, False, 4)]


async def test_a_foreign_exception_is_contained_as_retryable() -> None:
    hub_runner, _, _, _ = runner([KeyError("bug")], attempts=2)
    outcome = await hub_runner.handle(submitted_event())
    assert outcome is not None and outcome.succeeded  # second call succeeds


async def test_events_for_other_agencies_are_ignored() -> None:
    hub_runner, publisher, connector, _ = runner([])
    assert await hub_runner.handle(submitted_event(routed=["opeka"])) is None
    assert connector.calls == [] and publisher.records == []


async def test_outcome_waits_for_the_bus_to_come_back() -> None:
    hub_runner, publisher, _, _ = runner([])
    publisher.fail = True

    async def heal(_: float) -> None:
        publisher.fail = False

    hub_runner._stopped_within = heal  # type: ignore[method-assign,assignment]
    outcome = await hub_runner.handle(submitted_event())
    assert outcome is not None and outcome.succeeded
    assert len(publisher.records) == 1
