"""One bad record never stops a consumer. The connector runner in its real Kafka loop
(``ConnectorLoop``) over the in-memory consumer: a mapping that raises ValueError, an agency
answering with a 65-character reference, and a connector breaking its contract are each
dead-lettered with an error class (and without the data the error quoted), the failed
outcome is published, the next record is delivered, and every offset is committed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diasyndesi_sdk.connector import Connector, Delivery, Receipt
from hub.bus import MemoryBus, MemoryConsumer, MemoryPublisher, TopicPartition
from hub.connector_loop import ConnectorLoop
from hub.connector_runner import ConnectorRunner
from hub.events import OutgoingRecord, decode, encode
from hub.mapping import Mapping, load_mapping
from hub.metrics import HubMetrics
from hub.retry_topics import H_ERROR, H_ERROR_CLASS, dlq_topic
from hub.samples import sample_referral
from hub.settings import AgencyConnection, RetrySettings
from schemas.events import (
    REFERRAL_SUBMITTED,
    TOPIC_DELIVERIES,
    TOPIC_REFERRALS,
    DeliveryOutcome,
    ReferralSubmitted,
)
from schemas.referral import Referral
from tests.memory_kafka import stop_when_committed

ROOT = Path(__file__).resolve().parents[2]
BAD_MAPPING = "00000000-0000-4000-8000-000000000001"
LONG_REFERENCE = "00000000-0000-4000-8000-000000000002"
CONTRACT_BROKEN = "00000000-0000-4000-8000-000000000003"
GOOD = "00000000-0000-4000-8000-000000000004"
TP = TopicPartition(TOPIC_REFERRALS, 0)


def referral_record(referral_id: str, seed: int) -> OutgoingRecord:
    referral = Referral(
        **sample_referral(seed=seed, programmes=["UNEMPLOYMENT_REGISTRATION"]),
        id=referral_id,
        created_at=datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
        municipality="kozani",
        routed=["dypa"],
    )
    return encode(
        TOPIC_REFERRALS, REFERRAL_SUBMITTED, ReferralSubmitted(referral=referral), key=referral_id
    )


class PickyMapping:
    """The real ΔΥΠΑ mapping, except that it chokes on one referral and says why with the
    value it saw (as ``strptime`` and many libraries do)."""

    def __init__(self, real: Mapping) -> None:
        self.real = real

    def apply(self, referral: dict[str, Any]) -> dict[str, Any]:
        if referral["id"] == BAD_MAPPING:
            birth = referral["beneficiary"]["birth_date"]
            raise ValueError(f"time data {birth!r} does not match format '%d/%m/%Y'")
        return self.real.apply(referral)


class Agency(Connector):
    family = "fake"

    def __init__(self) -> None:
        super().__init__("dypa", AgencyConnection())
        self.calls: list[str] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def deliver(self, delivery: Delivery) -> Receipt:
        self.calls.append(delivery.referral_id)
        if delivery.referral_id == LONG_REFERENCE:
            return Receipt(reference="DYPA-" + "9" * 60)  # 65 characters: over the schema's 64
        if delivery.referral_id == CONTRACT_BROKEN:
            return {"reference": "DYPA-1"}  # type: ignore[return-value]  # not a Receipt
        return Receipt(reference="DYPA-7")


async def test_bad_records_are_dead_lettered_and_the_consumer_goes_on() -> None:
    agency = Agency()
    bus = MemoryBus()
    publisher = MemoryPublisher(bus)
    metrics = HubMetrics()
    mapping = load_mapping(ROOT / "mappings" / "dypa.yaml", "dypa")
    retry = RetrySettings(attempts=1, initial_s=0.001, max_s=0.01, jitter_s=0)
    runner = ConnectorRunner(agency, PickyMapping(mapping), publisher, retry, metrics)  # type: ignore[arg-type]
    centre = MemoryPublisher(bus)  # the relay's side: what the runner reads
    for seed, referral_id in enumerate([BAD_MAPPING, LONG_REFERENCE, CONTRACT_BROKEN, GOOD]):
        await centre.publish(referral_record(referral_id, seed))
    consumer = MemoryConsumer(bus, [TOPIC_REFERRALS], group_id="diasyndesi.connector.dypa")
    await consumer.start()
    stop_when_committed(consumer, runner.stop, {TP: 4})
    await asyncio.wait_for(ConnectorLoop(runner).run(consumer), 5)

    assert bus.committed[consumer.group_id] == {TP: 4}, "every record committed: nothing stuck"
    assert agency.calls == [LONG_REFERENCE, CONTRACT_BROKEN, GOOD]  # no call without a payload
    outcomes: dict[str, DeliveryOutcome] = {}
    for record in publisher.records:
        if record.topic == TOPIC_DELIVERIES:
            data = decode(record.headers, record.key, record.value).data
            assert isinstance(data, DeliveryOutcome)
            outcomes[data.referral_id] = data
    assert outcomes[GOOD].succeeded and outcomes[GOOD].reference == "DYPA-7"
    expected = {
        BAD_MAPPING: "mapping_error",
        LONG_REFERENCE: "invalid_receipt",
        CONTRACT_BROKEN: "unexpected:AttributeError",
    }
    for referral_id, error_class in expected.items():
        outcome = outcomes[referral_id]
        assert (outcome.succeeded, outcome.dead_lettered, outcome.permanent) == (
            False,
            True,
            True,
        )
        assert outcome.error_class == error_class
    assert outcomes[LONG_REFERENCE].error_message == (
        "agency receipt invalid: reference: string_too_long"
    )
    assert outcomes[BAD_MAPPING].error_message == "mapping failed: ValueError"

    dead = [r for r in publisher.records if r.topic == dlq_topic("dypa")]
    assert [dict(r.headers)[H_ERROR_CLASS].decode() for r in dead] == list(expected.values())
    # nothing the errors quoted (a birth date, the agency's answer) may leave the hub
    birth = sample_referral(seed=0, programmes=["UNEMPLOYMENT_REGISTRATION"])["beneficiary"]
    for record in dead:
        message = dict(record.headers)[H_ERROR].decode()
        assert birth["birth_date"] not in message and "9" * 60 not in message
    for outcome in outcomes.values():
        assert birth["birth_date"] not in (outcome.error_message or "")
        assert "9" * 60 not in (outcome.error_message or "")
    for error_class in expected.values():
        value = metrics.registry.get_sample_value(
            "diasyndesi_record_errors_total", {"consumer": "dypa", "error_class": error_class}
        )
        assert value == 1.0
