"""The Kafka seam: producer, consumer and topic admin through aiokafka, with every
setting explicit and every call bounded. aiokafka exceptions stop here and become
BrokerError (STYLE.md: foreign errors are translated at the seam).

``MemoryPublisher`` is the in-memory fake for fast unit tests; integration tests use the
real embedded broker through ``KafkaPublisher``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from hub.errors import BrokerError, BrokerTimeout
from hub.events import OutgoingRecord
from hub.settings import ConsumerSettings, ProducerSettings
from schemas.events import TOPIC_DELIVERIES, TOPIC_REFERRALS, TOPIC_STATUS

HUB_TOPICS = (TOPIC_REFERRALS, TOPIC_DELIVERIES, TOPIC_STATUS)
MARKER_TOPIC = "kk.hub.marker"
"""Created with the hub topics and never written: if it is gone, the broker lost its data."""


class Publisher(Protocol):
    """Sends records to the bus; returns only once the broker has acknowledged them."""

    async def publish(self, record: OutgoingRecord) -> None: ...


@dataclass
class MemoryPublisher:
    """In-memory fake of the bus for unit tests: keeps what was published, can fail on demand."""

    records: list[OutgoingRecord]
    fail: bool = False

    def __init__(self) -> None:
        self.records = []
        self.fail = False

    async def publish(self, record: OutgoingRecord) -> None:
        if self.fail:
            raise BrokerError("memory bus is down")
        self.records.append(record)


class KafkaPublisher:
    """aiokafka producer with acks=all and a bounded send."""

    def __init__(self, bootstrap: str, settings: ProducerSettings, client_id: str) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks=settings.acks,
            enable_idempotence=settings.enable_idempotence,
            linger_ms=settings.linger_ms,
            max_batch_size=settings.max_batch_size,
            max_request_size=settings.max_request_size,
            request_timeout_ms=settings.request_timeout_ms,
            retry_backoff_ms=settings.retry_backoff_ms,
            compression_type=settings.compression_type,
        )
        self._started = False

    async def start(self) -> None:
        """Connect; raises BrokerError if the broker is unreachable (caller may retry)."""
        try:
            await asyncio.wait_for(self._producer.start(), self._settings.send_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._safe_stop()
            raise BrokerError(f"producer could not connect: {type(exc).__name__}") from exc
        self._started = True

    async def publish(self, record: OutgoingRecord) -> None:
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    record.topic, record.value, key=record.key, headers=record.headers
                ),
                self._settings.send_timeout_s,
            )
        except TimeoutError as exc:
            raise BrokerTimeout(f"send to {record.topic} timed out") from exc
        except KafkaError as exc:
            raise BrokerError(f"send to {record.topic} failed: {type(exc).__name__}") from exc

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        """Send a batch and wait for every acknowledgement (one bound for the whole batch)."""
        try:
            futures = [
                await self._producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                for r in records
            ]
            await asyncio.wait_for(asyncio.gather(*futures), self._settings.send_timeout_s)
        except TimeoutError as exc:
            raise BrokerTimeout("batch send timed out") from exc
        except KafkaError as exc:
            raise BrokerError(f"batch send failed: {type(exc).__name__}") from exc

    async def stop(self) -> None:
        await self._safe_stop()

    async def _safe_stop(self) -> None:
        try:
            await asyncio.wait_for(self._producer.stop(), 5)
        except Exception:  # noqa: S110 - stopping a broken producer must not mask the cause
            pass
        self._started = False


def make_consumer(
    bootstrap: str,
    group_id: str,
    topics: Sequence[str],
    settings: ConsumerSettings,
    client_id: str,
    listener: ConsumerRebalanceListener | None = None,
) -> AIOKafkaConsumer:
    """A consumer in ``group_id`` with manual commits only, subscribed with ``listener`` so
    in-flight work can be drained before partitions move to another member."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        max_poll_records=settings.max_poll_records,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        request_timeout_ms=settings.request_timeout_ms,
        isolation_level="read_uncommitted",
    )
    consumer.subscribe(topics=list(topics), listener=listener)
    return consumer


async def ensure_topics(
    bootstrap: str, topics: Sequence[str], partitions: int, timeout_s: float = 15.0
) -> None:
    """Create the topics if missing; "already exists" counts as success."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        missing = [t for t in topics if t not in existing]
        for topic in missing:
            try:
                await asyncio.wait_for(
                    admin.create_topics(
                        [NewTopic(name=topic, num_partitions=partitions, replication_factor=1)]
                    ),
                    timeout_s,
                )
            except TopicAlreadyExistsError:
                pass
    except TimeoutError as exc:
        raise BrokerTimeout("topic administration timed out") from exc
    except (KafkaError, OSError) as exc:
        raise BrokerError(f"topic administration failed: {type(exc).__name__}") from exc
    finally:
        try:
            await asyncio.wait_for(admin.close(), 5)
        except Exception:  # noqa: S110
            pass


async def list_topics(bootstrap: str, timeout_s: float = 5.0) -> set[str]:
    """Topic names the broker knows; raises BrokerError if it cannot be asked."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        names: Any = await asyncio.wait_for(admin.list_topics(), timeout_s)
        return set(names)
    except TimeoutError as exc:
        raise BrokerTimeout("listing topics timed out") from exc
    except (KafkaError, OSError) as exc:
        raise BrokerError(f"listing topics failed: {type(exc).__name__}") from exc
    finally:
        try:
            await asyncio.wait_for(admin.close(), 5)
        except Exception:  # noqa: S110
            pass
