"""The connector runner and withdrawals, with an in-memory bus and a scripted connector that
also withdraws: the agency is told with a key of its own, through the same retries and dead
letters, and a withdrawal that ends the agency's referral supersedes a delivery read after
it (the overtaking rule, docs/decisions/0019-withdrawal.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from diasyndesi_sdk.connector import Receipt, Withdrawal, Withdraws, idempotency_key
from hub.bus import MemoryPublisher
from hub.connector_runner import ConnectorRunner, Incoming
from hub.errors import PermanentError, RetryableError
from hub.events import Event, decode, encode
from hub.mapping import load_mapping
from hub.metrics import HubMetrics
from hub.retry_topics import RetryState, dlq_topic, retry_topic
from hub.settings import RetrySettings
from schemas.codes import ProgrammeCode, WithdrawalReason
from schemas.events import (
    REFERRAL_WITHDRAWN,
    TOPIC_DELIVERIES,
    TOPIC_REFERRALS,
    WITHDRAWAL_ACKNOWLEDGED,
    WITHDRAWAL_FAILED,
    ReferralWithdrawn,
    WithdrawalOutcome,
)
from tests.unit.test_connector_runner import (
    MAPPINGS,
    REFERRAL_ID,
    ScriptedConnector,
    incoming,
    no_sleep,
    submitted_event,
)

WITHDRAWAL_ID = "22222222-2222-4222-8222-222222222222"


class WithdrawingConnector(ScriptedConnector, Withdraws):
    """Delivers as scripted; withdraws raising ``withdraw_script`` in order, then answers."""

    def __init__(self, withdraw_script: list[Exception] | None = None) -> None:
        super().__init__([])
        self.withdraw_script = list(withdraw_script or [])
        self.withdrawals: list[Withdrawal] = []

    async def withdraw(self, withdrawal: Withdrawal) -> Receipt:
        self.withdrawals.append(withdrawal)
        if self.withdraw_script:
            raise self.withdraw_script.pop(0)
        return Receipt(reference="DYPA-7")


def withdrawn_event(complete: bool = True) -> Event:
    data = ReferralWithdrawn(
        referral_id=REFERRAL_ID,
        centre="KK-KOZANI",
        agencies=["dypa"],
        programmes=[ProgrammeCode.UNEMPLOYMENT_REGISTRATION],
        complete_for=["dypa"] if complete else [],
        reason=WithdrawalReason.CONSENT_WITHDRAWN,
        submitted_event_id=submitted_event().id,
        withdrawn_at=datetime(2026, 11, 21, 9, 0, tzinfo=UTC),
    )
    record = encode(
        TOPIC_REFERRALS, REFERRAL_WITHDRAWN, data, key=REFERRAL_ID, event_id=WITHDRAWAL_ID
    )
    return decode(record.headers, record.key, record.value)


def withdrawal_record(retry: RetryState | None = None) -> Incoming:
    event = withdrawn_event()
    record = encode(
        TOPIC_REFERRALS, REFERRAL_WITHDRAWN, event.data, key=REFERRAL_ID, event_id=event.id
    )
    return Incoming(
        event,
        record.headers,
        record.key,
        record.value,
        f"{TOPIC_REFERRALS}/0/8",
        retry or RetryState(),
    )


def make(
    script: list[Exception] | None = None,
) -> tuple[ConnectorRunner, MemoryPublisher, WithdrawingConnector]:
    connector = WithdrawingConnector(script)
    publisher = MemoryPublisher()
    mapping = load_mapping(MAPPINGS / "dypa.yaml", "dypa")
    retry = RetrySettings(attempts=2, initial_s=0.001, max_s=0.01, jitter_s=0)
    return (
        ConnectorRunner(connector, mapping, publisher, retry, HubMetrics(), sleep=no_sleep),
        publisher,
        connector,
    )


def outcome_events(publisher: MemoryPublisher) -> list[Event]:
    return [
        decode(r.headers, r.key, r.value) for r in publisher.records if r.topic == TOPIC_DELIVERIES
    ]


async def test_the_agency_is_told_with_its_own_key_and_the_delivery_key() -> None:
    runner, publisher, connector = make()
    await runner.handle(incoming())
    outcome = await runner.handle(withdrawal_record())
    [withdrawal] = connector.withdrawals
    assert withdrawal.idempotency_key == idempotency_key(WITHDRAWAL_ID, "dypa")
    assert withdrawal.delivery_key == idempotency_key(submitted_event().id, "dypa")
    assert withdrawal.programmes == ("JOBSEEKER_REGISTRATION",)  # the mapping's code, not the hub's
    assert withdrawal.whole is True
    assert withdrawal.reason == "consent_withdrawn"
    assert isinstance(outcome, WithdrawalOutcome)
    [_, acknowledged] = outcome_events(publisher)
    assert acknowledged.type == WITHDRAWAL_ACKNOWLEDGED
    assert isinstance(acknowledged.data, WithdrawalOutcome)
    assert acknowledged.data.withdrawal_id == WITHDRAWAL_ID
    assert acknowledged.data.reference == "DYPA-7"


async def test_a_delivery_read_after_the_withdrawal_is_not_made() -> None:
    """The overtaking race: the delivery failed to a retry topic, the withdrawal came first
    on the main topic; when the retry is due, nothing reaches the agency."""
    runner, publisher, connector = make()
    await runner.handle(withdrawal_record())
    retried = incoming(retry=RetryState(level=1, attempts=3))
    assert await runner.handle(retried) is None
    assert connector.calls == []
    assert [e.type for e in outcome_events(publisher)] == [WITHDRAWAL_ACKNOWLEDGED]


async def test_a_partial_withdrawal_does_not_supersede_the_delivery() -> None:
    runner, _, connector = make()
    event = withdrawn_event(complete=False)
    record = encode(TOPIC_REFERRALS, REFERRAL_WITHDRAWN, event.data, key=REFERRAL_ID)
    await runner.handle(
        Incoming(event, record.headers, record.key, record.value, "x/0/1", RetryState())
    )
    assert connector.withdrawals[0].whole is False
    await runner.handle(incoming())
    assert len(connector.calls) == 1


async def test_a_failing_withdrawal_goes_to_the_retry_topics_then_the_dead_letters() -> None:
    runner, publisher, _ = make([RetryableError("down", error_class="http_503")] * 2)
    await runner.handle(withdrawal_record())
    [rerouted] = [r for r in publisher.records if r.topic != TOPIC_DELIVERIES]
    assert rerouted.topic == retry_topic("dypa", 1)
    assert decode(rerouted.headers, rerouted.key, rerouted.value).id == WITHDRAWAL_ID
    [failed] = outcome_events(publisher)
    assert failed.type == WITHDRAWAL_FAILED

    runner, publisher, _ = make([PermanentError("no", error_class="http_400")])
    outcome = await runner.handle(withdrawal_record())
    assert outcome is not None and outcome.dead_lettered
    assert [r.topic for r in publisher.records if r.topic != TOPIC_DELIVERIES] == [
        dlq_topic("dypa")
    ]


async def test_a_family_that_cannot_withdraw_dead_letters_the_withdrawal() -> None:
    connector = ScriptedConnector([])
    publisher = MemoryPublisher()
    mapping = load_mapping(MAPPINGS / "dypa.yaml", "dypa")
    runner = ConnectorRunner(
        connector, mapping, publisher, RetrySettings(), HubMetrics(), sleep=no_sleep
    )
    outcome = await runner.handle(withdrawal_record())
    assert outcome is not None and outcome.dead_lettered
    assert outcome.error_class == "withdrawal_unsupported"
