"""Recovery from a broker that lost its data (decision 0009), without a broker: the topic
admin is a fake that forgets on demand, the database is real, the consumers are in-memory.
The process that takes the lease re-creates the topics (the marker with them) and
re-drives; every process rewinds its consumers, and their first assignment after the loss,
once per loss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from hub.bus import (
    HUB_TOPICS,
    Consumer,
    ConsumerRebalanceListener,
    KafkaCluster,
    MemoryBus,
    MemoryConsumer,
    MemoryPublisher,
    TopicPartition,
)
from hub.consumers import MARKER_TOPIC, RECOVERY_LEASE, BrokerDataLoss, Consumers
from hub.db import Database
from hub.events import OutgoingRecord
from hub.leases import Leases
from hub.metrics import HubMetrics
from hub.schema import upgrade
from hub.settings import ConsumerSettings
from hub.supervisor import Supervisor
from tests.databases import fresh_database_url

CONNECTOR_TOPICS = ["kk.retry.dypa.1", "kk.dlq.dypa"]


class Admin:
    """The broker's topic list, as ``list_topics`` and ``ensure_topics`` see it."""

    def __init__(self) -> None:
        self.topics: set[str] = set()
        self.created: list[list[str]] = []

    async def list_topics(self, kafka: KafkaCluster, timeout_s: float = 5.0) -> set[str]:
        return set(self.topics)

    async def ensure_topics(
        self, kafka: KafkaCluster, topics: Sequence[str], timeout_s: float = 15.0
    ) -> None:
        self.created.append(list(topics))
        self.topics.update(topics)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(fresh_database_url(tmp_path))
    await upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Admin:
    fake = Admin()
    monkeypatch.setattr("hub.consumers.list_topics", fake.list_topics)
    monkeypatch.setattr("hub.consumers.ensure_topics", fake.ensure_topics)
    return fake


class Rewinds:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


def watcher(db: Database, rewinds: Rewinds) -> BrokerDataLoss:
    """Checks only when told to (``check_soon``) after its first check."""
    return BrokerDataLoss(
        db,
        KafkaCluster("127.0.0.1:1"),
        [*HUB_TOPICS, *CONNECTOR_TOPICS],
        rewind=rewinds,
        leases=Leases(db),
        check_s=3600.0,
    )


async def test_a_lost_marker_recreates_the_topics_redrives_and_rewinds(
    db: Database, admin: Admin
) -> None:
    rewinds = Rewinds()
    watch = watcher(db, rewinds)
    await watch.check()  # a new broker: no marker
    # the topics, then (after the re-drive is queued) the marker, last
    assert admin.created == [[*HUB_TOPICS, *CONNECTOR_TOPICS], [MARKER_TOPIC]]
    assert rewinds.count == 1
    assert await Leases(db).generation(RECOVERY_LEASE) == 1

    admin.topics.clear()  # the broker lost everything, but the next check is not due yet
    await watch.check()
    assert len(admin.created) == 2 and rewinds.count == 1
    watch.check_soon()  # after a publish error: check before the next publish
    await watch.check()
    assert len(admin.created) == 4 and rewinds.count == 2
    assert await Leases(db).generation(RECOVERY_LEASE) == 2


async def test_a_failed_redrive_leaves_the_marker_missing_so_the_next_check_recovers(
    db: Database, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    rewinds = Rewinds()
    watch = watcher(db, rewinds)

    async def database_away(_: Database) -> int:
        raise OSError("database away")

    monkeypatch.setattr("hub.consumers.redrive_unfinished", database_away)
    with pytest.raises(OSError):
        await watch.check()
    assert MARKER_TOPIC not in admin.topics  # so the loss is not forgotten
    monkeypatch.undo()
    monkeypatch.setattr("hub.consumers.list_topics", admin.list_topics)
    monkeypatch.setattr("hub.consumers.ensure_topics", admin.ensure_topics)
    watch.check_soon()
    await watch.check()
    assert MARKER_TOPIC in admin.topics and rewinds.count == 1


async def test_a_marker_in_place_changes_nothing(db: Database, admin: Admin) -> None:
    admin.topics = {*HUB_TOPICS, MARKER_TOPIC}
    rewinds = Rewinds()
    watch = watcher(db, rewinds)
    for _ in range(3):
        watch.check_soon()
        await watch.check()
    assert admin.created == [] and rewinds.count == 0


async def test_another_process_recovered_so_this_one_rewinds_once(
    db: Database, admin: Admin
) -> None:
    admin.topics = {*HUB_TOPICS, MARKER_TOPIC}
    rewinds = Rewinds()
    watch = watcher(db, rewinds)
    await Leases(db).bump(RECOVERY_LEASE)  # a loss recovered before this process started
    await watch.check()
    assert rewinds.count == 0

    other = Leases(db)
    assert await other.acquire(RECOVERY_LEASE)
    await other.bump(RECOVERY_LEASE)  # another serve recovered from a loss
    await other.release(RECOVERY_LEASE)
    for _ in range(2):
        watch.check_soon()
        await watch.check()
    assert rewinds.count == 1
    assert admin.created == []  # the other process re-created the topics, not this one


async def test_while_another_process_holds_the_lease_this_one_waits(
    db: Database, admin: Admin
) -> None:
    other = Leases(db)
    assert await other.acquire(RECOVERY_LEASE, ttl_s=60.0)  # recovering right now
    rewinds = Rewinds()
    watch = watcher(db, rewinds)
    await watch.check()
    assert admin.created == [] and rewinds.count == 0


# ------------------------------------------------------------ the consumers' side: rewinds


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_after_a_loss_each_consumer_and_its_next_assignment_read_from_the_start() -> None:
    bus = MemoryBus()
    made: list[MemoryConsumer] = []

    def new_consumer(
        kafka: KafkaCluster,
        group_id: str,
        topics: Sequence[str],
        settings: ConsumerSettings,
        client_id: str,
        listener: ConsumerRebalanceListener | None = None,
    ) -> MemoryConsumer:
        made.append(MemoryConsumer(bus, topics, group_id=group_id, listener=listener))
        return made[-1]

    metrics = HubMetrics()
    supervisor = Supervisor(metrics, initial_s=0.01, max_s=0.1)
    consumers = Consumers(
        KafkaCluster("127.0.0.1:1"), ConsumerSettings(), supervisor, new_consumer=new_consumer
    )
    read: list[bytes] = []
    stop = asyncio.Event()

    async def body(consumer: Consumer) -> None:  # reads and commits, as the loops do
        while not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=20)).items():
                read.extend(r.value or b"" for r in records)
                await consumer.commit({tp: records[-1].offset + 1})

    feed = MemoryPublisher(bus)
    for n in range(2):
        await feed.publish(OutgoingRecord(topic="kk.t", key=b"k", headers=[], value=b"%d" % n))
    task = asyncio.create_task(consumers.consume("g", ["kk.t"], body))
    await until(lambda: read == [b"0", b"1"])
    assert consumers.assigned(1) and consumers.not_joined(["g", "other"]) == ["other"]

    await consumers.rewind_all()  # the relay found the broker emptied
    await until(lambda: len(read) == 4)
    [consumer] = made
    tp = TopicPartition("kk.t", 0)
    await consumer.rebalance({tp})  # the group rejoins and restores the committed offset
    await until(lambda: len(read) == 6)
    await consumer.rebalance({tp})  # a later rejoin: from the offsets committed since
    await asyncio.sleep(0.1)
    assert read == [b"0", b"1"] * 3

    consumers.stop()
    stop.set()
    await asyncio.wait_for(task, 2.0)
    assert consumers.not_joined(["g"]) == ["g"] and consumer.assignment() == set()
    await supervisor.stop(1.0)
