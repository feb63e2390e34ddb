"""The Kafka seam: producer, consumer and topic admin through aiokafka, with every
setting explicit and every call bounded. aiokafka exceptions stop here and become
BrokerError (foreign errors are translated at the seam: hub/errors.py).

The consumer loops (the connector runner's, the projector's) are written against the
``Consumer`` protocol and import nothing from aiokafka: ``TopicPartition``, ``KafkaError``
(what a fetch may raise) and ``ConsumerRebalanceListener`` are re-exported here for them.

In-memory fakes for fast unit tests: ``MemoryPublisher``, and ``MemoryConsumer`` reading what
it published through a shared ``MemoryBus`` (the idea of FastStream's ``TestKafkaBroker``), so
a loop runs end to end without a broker. Integration tests use the real embedded broker.

Every client takes a ``KafkaCluster`` rather than a bootstrap string, so none can be created
without the cluster's security options (TLS, SASL/SCRAM) or the hub's topic settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import ConsumerRebalanceListener as ConsumerRebalanceListener
from aiokafka import TopicPartition as TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, TopicAlreadyExistsError
from aiokafka.errors import KafkaError as KafkaError
from aiokafka.helpers import create_ssl_context

from hub.errors import BrokerError, BrokerTimeout, ConfigurationError
from hub.events import OutgoingRecord
from hub.logs import get_logger
from hub.settings import ConsumerSettings, KafkaClientSettings, ProducerSettings, Settings
from schemas.events import TOPIC_DELIVERIES, TOPIC_REFERRALS, TOPIC_STATUS

HUB_TOPICS = (TOPIC_REFERRALS, TOPIC_DELIVERIES, TOPIC_STATUS)

log = get_logger(__name__)


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


class ConsumedRecord(Protocol):
    """A record as a consumer hands it over (aiokafka's ``ConsumerRecord``, ``MemoryRecord``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Consumer(Protocol):
    """What the hub uses of a Kafka consumer: ``AIOKafkaConsumer`` (``make_consumer``) in
    production, ``MemoryConsumer`` in unit tests."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def assignment(self) -> AbstractSet[TopicPartition]: ...
    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[ConsumedRecord]]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None: ...


@dataclass
class MemoryPublisher:
    """In-memory fake of the bus for unit tests: keeps what was published (and appends it to
    ``bus``, if given, for a ``MemoryConsumer`` to read), can fail on demand."""

    records: list[OutgoingRecord]
    fail: bool = False
    bus: MemoryBus | None = None

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self.records = []
        self.fail = False
        self.bus = bus

    async def publish(self, record: OutgoingRecord) -> None:
        if self.fail:
            raise BrokerError("memory bus is down")
        self.records.append(record)
        if self.bus is not None:
            self.bus.append(record)


@dataclass(frozen=True)
class MemoryRecord:
    """A record as ``MemoryConsumer`` hands it over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class MemoryBus:
    """Topics in memory as a broker keeps them: partitions of records with offsets, and the
    offsets each consumer group committed. A record's partition follows its key."""

    def __init__(self, partitions: int = 1) -> None:
        self.partitions = partitions
        self.logs: dict[TopicPartition, list[MemoryRecord]] = {}
        self.committed: dict[str, dict[TopicPartition, int]] = {}
        self._appended = asyncio.Event()

    def create(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions, created empty if it is new (as the broker auto-creates)."""
        partitions = [TopicPartition(topic, n) for n in range(self.partitions)]
        for tp in partitions:
            self.logs.setdefault(tp, [])
        return partitions

    def append(self, record: OutgoingRecord) -> MemoryRecord:
        self.create(record.topic)
        tp = TopicPartition(record.topic, zlib.crc32(record.key) % self.partitions)
        log = self.logs[tp]
        stored = MemoryRecord(
            tp.topic, tp.partition, len(log), record.key, record.value, list(record.headers)
        )
        log.append(stored)
        self._appended.set()  # wakes every fetch waiting for a record
        self._appended = asyncio.Event()
        return stored

    def topic(self, name: str) -> list[MemoryRecord]:
        """Every record of a topic, partition after partition (for tests to read)."""
        return [r for tp in sorted(self.logs) if tp.topic == name for r in self.logs[tp]]

    async def wait_for_append(self, timeout_s: float) -> None:
        """Until the next record arrives on any topic, at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._appended.wait(), timeout_s)


class MemoryConsumer:
    """A consumer of one group over a ``MemoryBus``, with aiokafka's semantics where the
    hub's loops rely on them: it owns partitions once started (every partition of its
    topics: the only member of its group); a fetch returns records from each owned partition
    that is not paused, from its position, waiting up to ``timeout_ms`` for one to arrive;
    ``seek`` and ``seek_to_beginning`` move a position; a commit stores the group's offsets
    (an unowned partition is an IllegalStateError), which the next member starts from. A
    rebalance (``rebalance``, for tests) tells the listener, forgets the pauses and starts
    every position again from the committed offsets.

    For tests it keeps every commit (``commits``), counts fetches (``fetches``), and raises
    what is put in ``fetch_errors`` or ``commit_errors`` on the next fetch or commit."""

    def __init__(
        self,
        bus: MemoryBus,
        topics: Sequence[str],
        *,
        group_id: str = "memory",
        listener: ConsumerRebalanceListener | None = None,
        max_records: int | None = None,
    ) -> None:
        self.bus = bus
        self.topics = list(topics)
        self.group_id = group_id
        self.listener = listener
        self.max_records = max_records
        self.commits: list[dict[TopicPartition, int]] = []
        self.fetches = 0
        self.fetch_errors: list[Exception] = []
        self.commit_errors: list[Exception] = []
        self._owned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()

    async def start(self) -> None:
        """Join the group: own every partition of the subscribed topics."""
        await self.rebalance(tp for topic in self.topics for tp in self.bus.create(topic))

    async def stop(self) -> None:
        """Leave the group (what is committed stays)."""
        self._owned, self._positions, self._paused = set(), {}, set()

    async def rebalance(self, partitions: Iterable[TopicPartition]) -> None:
        """The group rebalanced and this member now owns ``partitions``. As with aiokafka,
        the revoked partitions are still owned while the listener hears of them (a batch in
        flight can still commit)."""
        await self._tell("on_partitions_revoked", set(self._owned))
        self._owned = set(partitions)
        committed = self.bus.committed.get(self.group_id, {})
        self._positions = {tp: committed.get(tp, 0) for tp in self._owned}
        self._paused = set()
        await self._tell("on_partitions_assigned", set(self._owned))

    async def _tell(self, callback: str, partitions: set[TopicPartition]) -> None:
        if self.listener is None:
            return
        try:
            await getattr(self.listener, callback)(partitions)
        except Exception:  # aiokafka logs a failing listener and goes on
            log.exception("rebalance listener failed", callback=callback)

    def assignment(self) -> set[TopicPartition]:
        return set(self._owned)

    def _check_owned(self, partitions: Iterable[TopicPartition]) -> None:
        strangers = set(partitions) - self._owned
        if strangers:
            raise IllegalStateError(f"partitions {sorted(strangers)} are not assigned")

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[MemoryRecord]]:
        self.fetches += 1
        await asyncio.sleep(0)  # a fetch always lets other tasks run, as a real one does
        if self.fetch_errors:
            raise self.fetch_errors.pop(0)
        batch = self._take(partitions, max_records or self.max_records)
        if not batch and timeout_ms > 0:
            await self.bus.wait_for_append(timeout_ms / 1000)
            batch = self._take(partitions, max_records or self.max_records)
        return batch

    def _take(
        self, partitions: Sequence[TopicPartition], limit: int | None
    ) -> dict[TopicPartition, list[MemoryRecord]]:
        batch: dict[TopicPartition, list[MemoryRecord]] = {}
        left = limit
        for tp in sorted(set(partitions) or self._owned):
            if tp not in self._owned or tp in self._paused or left == 0:
                continue
            position = self._positions[tp]
            records = self.bus.logs[tp][position : None if left is None else position + left]
            if records:
                batch[tp] = records
                self._positions[tp] = position + len(records)
                left = None if left is None else left - len(records)
        return batch

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if offset < 0:
            raise ValueError("Offset must be a positive integer")
        self._check_owned([partition])
        self._positions[partition] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._check_owned(partitions)
        for tp in partitions or tuple(self._owned):
            self._positions[tp] = 0

    async def position(self, partition: TopicPartition) -> int:
        self._check_owned([partition])
        return self._positions[partition]

    def highwater(self, partition: TopicPartition) -> int | None:
        self._check_owned([partition])
        return len(self.bus.logs[partition])

    def pause(self, *partitions: TopicPartition) -> None:
        self._check_owned(partitions)
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._check_owned(partitions)
        self._paused.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        if not self._owned:
            raise IllegalStateError("No partitions assigned")
        chosen = dict(self._positions if offsets is None else offsets)
        self._check_owned(chosen)
        self.bus.committed.setdefault(self.group_id, {}).update(chosen)
        self.commits.append(chosen)

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.bus.committed.get(self.group_id, {}).get(partition)


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


async def commit_owned(
    consumer: Consumer, offsets: Mapping[TopicPartition, int], timeout_s: float
) -> str | None:
    """Commit ``offsets`` of the partitions this consumer still owns (a rebalance may have
    moved some), bounded by ``timeout_s``; the error's class if it failed (the records then
    come back to whoever owns them, and their consumers are idempotent), else None."""
    owned = consumer.assignment()
    mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
    if not mine:
        return None
    try:
        await asyncio.wait_for(consumer.commit(mine), timeout_s)
    except (CommitFailedError, KafkaError, TimeoutError) as exc:
        return type(exc).__name__
    return None


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
