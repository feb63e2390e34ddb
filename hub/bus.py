"""The Kafka seam: producer, consumer and topic admin through aiokafka, with every
setting explicit and every call bounded. aiokafka exceptions stop here and become
BrokerError (foreign errors are translated at the seam: hub/errors.py).

``MemoryPublisher`` is the in-memory fake for fast unit tests; integration tests use the
real embedded broker through ``KafkaPublisher``.

Every client takes a ``KafkaCluster`` rather than a bootstrap string, so none can be created
without the cluster's security options (TLS, SASL/SCRAM) or the hub's topic settings.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from hub.errors import BrokerError, BrokerTimeout, ConfigurationError
from hub.events import OutgoingRecord
from hub.settings import ConsumerSettings, KafkaClientSettings, ProducerSettings, Settings
from schemas.events import TOPIC_DELIVERIES, TOPIC_REFERRALS, TOPIC_STATUS

HUB_TOPICS = (TOPIC_REFERRALS, TOPIC_DELIVERIES, TOPIC_STATUS)


@dataclass(frozen=True)
class KafkaCluster:
    """Where the bus is and how the hub talks to it. ``client_options`` (aiokafka keyword
    arguments: security protocol, SSL context, SASL mechanism and credentials) go to every
    producer, consumer and admin client; topics the hub creates get ``partitions``,
    ``replication_factor`` and ``min.insync.replicas``. Build it once per process
    (:meth:`from_settings`): the TLS files are read then, not on every readiness probe."""

    bootstrap_servers: str
    client_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    partitions: int = 4
    replication_factor: int = 1
    min_insync_replicas: int = 1

    @classmethod
    def from_settings(
        cls, settings: Settings, bootstrap_servers: str | None = None
    ) -> KafkaCluster:
        """``bootstrap_servers`` overrides the setting (the embedded broker's address)."""
        return cls(
            bootstrap_servers or settings.kafka_bootstrap_servers,
            client_options(settings.kafka),
            partitions=settings.topic_partitions,
            replication_factor=settings.replication_factor,
            min_insync_replicas=settings.min_insync_replicas,
        )

    def new_topic(self, name: str) -> NewTopic:
        return NewTopic(
            name=name,
            num_partitions=self.partitions,
            replication_factor=self.replication_factor,
            # Apache Kafka enforces it with acks=all; the embedded broker ignores topic configs.
            topic_configs={"min.insync.replicas": str(self.min_insync_replicas)},
        )


def client_options(kafka: KafkaClientSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for these settings. A TLS file that cannot be loaded stops
    the start with the setting's name (ssl errors are translated here, at the seam)."""
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.uses_tls:
        key_password = kafka.ssl_key_password
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=kafka.ssl_cafile,
                certfile=kafka.ssl_certfile,
                keyfile=kafka.ssl_keyfile,
                password=key_password.get_secret_value() if key_password else None,
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                "KAFKA__SSL_CAFILE/KAFKA__SSL_CERTFILE/KAFKA__SSL_KEYFILE: cannot load "
                f"({type(exc).__name__}: {getattr(exc, 'reason', None) or exc.strerror})"
            ) from None
    if kafka.uses_sasl:
        options.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password.get_secret_value(),
        )
    return options


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

    def __init__(self, kafka: KafkaCluster, settings: ProducerSettings, client_id: str) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            **kafka.client_options,
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
    kafka: KafkaCluster,
    group_id: str,
    topics: Sequence[str],
    settings: ConsumerSettings,
    client_id: str,
    listener: ConsumerRebalanceListener | None = None,
) -> AIOKafkaConsumer:
    """A consumer in ``group_id`` with manual commits only, subscribed with ``listener`` so
    in-flight work can be drained before partitions move to another member."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        **kafka.client_options,
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


def _admin(kafka: KafkaCluster, request_timeout_ms: int) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers,
        request_timeout_ms=request_timeout_ms,
        **kafka.client_options,
    )


async def ensure_topics(
    kafka: KafkaCluster, topics: Sequence[str], timeout_s: float = 15.0
) -> None:
    """Create the topics if missing, with the cluster's partitions, replication factor and
    min.insync.replicas; "already exists" counts as success (existing topics keep theirs)."""
    admin = _admin(kafka, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        missing = [t for t in topics if t not in existing]
        for topic in missing:
            try:
                await asyncio.wait_for(admin.create_topics([kafka.new_topic(topic)]), timeout_s)
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


async def list_topics(kafka: KafkaCluster, timeout_s: float = 5.0) -> set[str]:
    """Topic names the broker knows; raises BrokerError if it cannot be asked."""
    admin = _admin(kafka, request_timeout_ms=5_000)
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
