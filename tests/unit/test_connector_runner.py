"""The hub side of a connector with an in-memory bus and a scripted fake connector:
mapping before delivery, the one retry policy, classification, outcome events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from diasyndesi_sdk.connector import Connector, Delivery, Receipt, idempotency_key
from hub.breaker import BreakerState
from hub.bus import MemoryPublisher
from hub.connector_loop import DrainOnRevoke
from hub.connector_runner import ConnectorRunner, Incoming
from hub.errors import PermanentError, RetryableError
from hub.events import Event, OutgoingRecord, decode, encode
from hub.mapping import load_mapping
from hub.metrics import HubMetrics
from hub.retry_policy import RETRY_AFTER_CAP_S
from hub.retry_topics import (
    H_ERROR_CLASS,
    H_LEVEL,
    H_REDRIVE_FOR,
    RetryState,
    dlq_topic,
    retry_topic,
)
from hub.samples import sample_referral
from hub.settings import AgencyConnection, RetrySettings, packaged_dir
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

MAPPINGS = packaged_dir("mappings")
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


def incoming(
    event: Event | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    retry: RetryState | None = None,
) -> Incoming:
    event = event or submitted_event()
    record = encode(
        TOPIC_REFERRALS, REFERRAL_SUBMITTED, event.data, key=REFERRAL_ID, event_id=event.id
    )
    return Incoming(
        event,
        headers or record.headers,
        record.key,
        record.value,
        f"{TOPIC_REFERRALS}/0/7",
        retry or RetryState(),
    )


async def no_sleep(_: float) -> None:
    return None


def runner(
    script: list[Exception], attempts: int = 3
) -> tuple[ConnectorRunner, MemoryPublisher, ScriptedConnector, HubMetrics]:
    connector = ScriptedConnector(script)
    publisher = MemoryPublisher()
    metrics = HubMetrics()
    mapping = load_mapping(MAPPINGS / "dypa.yaml", "dypa")
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
        if record.topic != TOPIC_DELIVERIES:
            continue
        assert record.key == REFERRAL_ID.encode()
        event = decode(record.headers, record.key, record.value)
        assert isinstance(event.data, DeliveryOutcome)
        result.append((event.type, event.data))
    return result


def rerouted(publisher: MemoryPublisher) -> list[OutgoingRecord]:
    return [r for r in publisher.records if r.topic != TOPIC_DELIVERIES]


async def test_delivers_the_mapped_payload_with_a_deterministic_key() -> None:
    hub_runner, publisher, connector, _ = runner([])
    event = submitted_event()
    outcome = await hub_runner.handle(incoming(event))
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
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and outcome.succeeded
    assert outcome.attempts == 3
    assert len({c.idempotency_key for c in connector.calls}) == 1
    assert [kind for kind, _ in outcomes(publisher)] == [DELIVERY_SUCCEEDED]
    retries = metrics.registry.get_sample_value(
        "diasyndesi_delivery_retries_total", {"connector": "dypa", "error_class": "http_503"}
    )
    assert retries == 1.0


async def test_permanent_failure_goes_straight_to_the_dead_letter_topic() -> None:
    hub_runner, publisher, connector, _ = runner([PermanentError("no", error_class="http_400")])
    event = submitted_event()
    outcome = await hub_runner.handle(incoming(event))
    assert outcome is not None and not outcome.succeeded
    assert (outcome.permanent, outcome.dead_lettered) == (True, True)
    assert len(connector.calls) == 1
    [(kind, data)] = outcomes(publisher)
    assert kind == DELIVERY_FAILED
    assert (data.error_class, data.attempts) == ("http_400", 1)
    [dead] = rerouted(publisher)
    assert dead.topic == dlq_topic("dypa")
    assert dead.key == REFERRAL_ID.encode()
    headers = dict(dead.headers)
    assert headers["ce_id"] == event.id.encode()  # same event, same idempotency key
    assert headers[H_ERROR_CLASS] == b"http_400"
    assert headers["x-dsy-origin"] == f"{TOPIC_REFERRALS}/0/7".encode()
    assert decode(dead.headers, dead.key, dead.value).id == event.id


async def test_exhausted_quick_attempts_go_to_the_next_retry_topic() -> None:
    errors: list[Exception] = [RetryableError("x", error_class="http_503") for _ in range(2)]
    hub_runner, publisher, connector, _ = runner(errors, attempts=2)
    hub_runner._clock = lambda: 1000.0  # type: ignore[method-assign]
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and not outcome.succeeded and not outcome.dead_lettered
    [retry] = rerouted(publisher)
    headers = dict(retry.headers)
    assert retry.topic == retry_topic("dypa", 1)
    assert (headers[H_LEVEL], headers["x-dsy-attempts"]) == (b"1", b"2")
    assert float(headers["x-dsy-due"]) == 1000.0 + hub_runner.retry.topic_delays_s[0]

    # The record comes back from the retry topic when due; it succeeds this time.
    again = Incoming(
        incoming().event,
        retry.headers,
        retry.key,
        retry.value,
        f"{retry.topic}/0/0",
        RetryState.from_headers(retry.headers),
    )
    outcome = await hub_runner.handle(again)
    assert outcome is not None and outcome.succeeded and outcome.attempts == 3
    assert len(connector.calls) == 3


async def test_the_last_retry_level_ends_in_the_dead_letter_topic() -> None:
    errors: list[Exception] = [RetryableError("x", error_class="timeout") for _ in range(9)]
    hub_runner, publisher, _, _ = runner(errors, attempts=1)
    levels = len(hub_runner.retry.topic_delays_s)
    last = RetryState(level=levels, attempts=levels)
    outcome = await hub_runner.handle(incoming(retry=last))
    assert outcome is not None and outcome.dead_lettered and not outcome.permanent
    assert outcome.attempts == levels + 1
    [dead] = rerouted(publisher)
    assert dead.topic == dlq_topic("dypa")


async def test_the_breaker_opens_after_consecutive_failures_and_closes_on_success() -> None:
    errors: list[Exception] = [RetryableError("x", error_class="http_503") for _ in range(5)]
    hub_runner, _, _, metrics = runner(errors, attempts=1)
    for _ in range(5):
        await hub_runner.handle(incoming())
    assert hub_runner.breaker.state == BreakerState.OPEN
    assert not hub_runner.breaker.allows()
    assert (
        metrics.registry.get_sample_value("diasyndesi_circuit_opened_total", {"connector": "dypa"})
        == 1.0
    )
    hub_runner.breaker.opened_at -= hub_runner.breaker.cooldown_s  # cooldown over
    assert hub_runner.breaker.allows() and hub_runner.breaker.state == BreakerState.HALF_OPEN
    await hub_runner.handle(incoming())  # the probe succeeds
    assert hub_runner.breaker.state == BreakerState.CLOSED


async def test_a_foreign_exception_is_contained_as_retryable() -> None:
    hub_runner, publisher, _, _ = runner([KeyError("bug")], attempts=2)
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and not outcome.succeeded and not outcome.dead_lettered
    assert outcome.error_class == "connector_bug"
    assert [r.topic for r in rerouted(publisher)] == [retry_topic("dypa", 1)]


async def test_events_for_other_agencies_are_ignored() -> None:
    hub_runner, publisher, connector, _ = runner([])
    assert await hub_runner.handle(incoming(submitted_event(routed=["opeka"]))) is None
    assert connector.calls == [] and publisher.records == []


async def test_outcome_waits_for_the_bus_to_come_back() -> None:
    hub_runner, publisher, _, _ = runner([])
    publisher.fail = True

    async def heal(_: float) -> bool:
        publisher.fail = False
        return False

    hub_runner._stopped_within = heal  # type: ignore[method-assign]
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and outcome.succeeded
    assert len(publisher.records) == 1


async def test_a_rebalance_waits_for_the_batch_in_flight() -> None:
    hub_runner, _, _, _ = runner([])
    listener = DrainOnRevoke(hub_runner, timeout_s=2.0)
    hub_runner.idle.clear()  # a batch is being processed
    revoke = asyncio.create_task(listener.on_partitions_revoked(set()))
    await asyncio.sleep(0.05)
    assert not revoke.done()
    hub_runner.idle.set()  # batch finished and committed
    await asyncio.wait_for(revoke, 1.0)


# --------------------------------------------------------------------------- Retry-After


def hinted(seconds: float, n: int = 1) -> list[Exception]:
    return [RetryableError("x", error_class="http_429", retry_after_s=seconds) for _ in range(n)]


def runner_with_sleeps(
    script: list[Exception], *, attempts: int = 5, max_s: float = 5.0
) -> tuple[ConnectorRunner, MemoryPublisher, ScriptedConnector, list[float]]:
    """A runner with the default backoff shape (0.2 s doubling, capped at ``max_s``, no
    jitter) that records how long it was asked to sleep between quick attempts."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    connector = ScriptedConnector(script)
    publisher = MemoryPublisher()
    mapping = load_mapping(MAPPINGS / "dypa.yaml", "dypa")
    retry = RetrySettings(attempts=attempts, initial_s=0.2, max_s=max_s, jitter_s=0)
    hub_runner = ConnectorRunner(connector, mapping, publisher, retry, HubMetrics(), sleep=sleep)
    hub_runner._clock = lambda: 1000.0  # type: ignore[method-assign]
    return hub_runner, publisher, connector, slept


async def test_each_pause_adds_the_runners_jitter_draw() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    draws = iter([0.5, 0.25, 0.0])  # one per call
    connector = ScriptedConnector([RetryableError("x", error_class="http_503") for _ in range(2)])
    mapping = load_mapping(MAPPINGS / "dypa.yaml", "dypa")
    retry = RetrySettings(attempts=3, initial_s=0.2, max_s=5.0, jitter_s=0.2)
    hub_runner = ConnectorRunner(
        connector,
        mapping,
        MemoryPublisher(),
        retry,
        HubMetrics(),
        sleep=sleep,
        jitter=draws.__next__,
    )
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and outcome.succeeded
    assert slept == pytest.approx([0.2 + 0.5 * 0.2, 0.4 + 0.25 * 0.2])


async def test_a_short_retry_after_is_waited_out_in_process() -> None:
    hub_runner, publisher, connector, slept = runner_with_sleeps(hinted(2.0, 2))
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and outcome.succeeded and outcome.attempts == 3
    assert len(connector.calls) == 3
    assert slept == [2.0, 2.0]  # the hint, not the shorter backoff (0.2 s, 0.4 s)
    assert rerouted(publisher) == []


async def test_backoff_longer_than_the_hint_wins() -> None:
    errors = [*hinted(0.1), RetryableError("x", error_class="http_503"), *hinted(0.1)]
    hub_runner, _, _, slept = runner_with_sleeps(errors)
    await hub_runner.handle(incoming())
    assert slept == [0.2, 0.4, 0.8]  # 0.2 s doubling, each longer than the 0.1 s hint


async def test_a_retry_after_beyond_max_s_goes_to_the_retry_topic_without_waiting() -> None:
    hub_runner, publisher, connector, slept = runner_with_sleeps(hinted(120.0))
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and not outcome.succeeded and not outcome.dead_lettered
    assert outcome.error_class == "http_429" and outcome.attempts == 1
    assert len(connector.calls) == 1, "no quick retry inside the agency's Retry-After"
    assert slept == []
    [retry] = rerouted(publisher)
    assert retry.topic == retry_topic("dypa", 1)
    assert float(dict(retry.headers)["x-dsy-due"]) == 1000.0 + 120.0  # > the 60 s topic delay


async def test_a_retry_after_after_some_quick_attempts_stops_them_too() -> None:
    errors = [RetryableError("x", error_class="http_503"), *hinted(30.0)]
    hub_runner, publisher, connector, slept = runner_with_sleeps(errors)
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and outcome.attempts == 2 and len(connector.calls) == 2
    assert slept == [0.2]
    [retry] = rerouted(publisher)
    # shorter than the topic's own delay: the topic delay (60 s) applies
    assert float(dict(retry.headers)["x-dsy-due"]) == 1000.0 + hub_runner.retry.topic_delays_s[0]


async def test_an_absurd_retry_after_is_capped() -> None:
    hub_runner, publisher, _, _ = runner_with_sleeps(hinted(10 * 365 * 86400.0))
    await hub_runner.handle(incoming())
    [retry] = rerouted(publisher)
    assert float(dict(retry.headers)["x-dsy-due"]) == 1000.0 + RETRY_AFTER_CAP_S
    assert RETRY_AFTER_CAP_S == 3600.0


async def test_a_retry_after_equal_to_max_s_is_still_honoured_in_process() -> None:
    hub_runner, publisher, _, slept = runner_with_sleeps(hinted(5.0))
    outcome = await hub_runner.handle(incoming())
    assert outcome is not None and outcome.succeeded
    assert slept == [5.0] and rerouted(publisher) == []


async def test_a_redriven_record_for_other_agencies_is_skipped_without_a_call() -> None:
    run, publisher, connector, _ = runner([])
    base = incoming().headers
    skipped = await run.handle(incoming(headers=[*base, (H_REDRIVE_FOR, b"opeka,kozani")]))
    assert skipped is None
    assert connector.calls == [] and publisher.records == []
    owed = await run.handle(incoming(headers=[*base, (H_REDRIVE_FOR, b"dypa,opeka")]))
    assert owed is not None and owed.succeeded
    assert len(connector.calls) == 1
