"""The in-memory bus behaves as the hub's loops expect of aiokafka and the broker: what is
published can be fetched from each partition's position; pause, seek, commit and a
rebalance do what they do on the real consumer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import IllegalStateError

from hub.bus import MemoryBus, MemoryConsumer, MemoryPublisher, TopicPartition
from hub.events import OutgoingRecord

TOPIC = "kk.test"
TP = TopicPartition(TOPIC, 0)


def record(n: int, key: bytes = b"k", topic: str = TOPIC) -> OutgoingRecord:
    return OutgoingRecord(topic=topic, key=key, headers=[("n", str(n).encode())], value=b"%d" % n)


async def published(count: int, bus: MemoryBus | None = None) -> MemoryBus:
    bus = bus or MemoryBus()
    publisher = MemoryPublisher(bus)
    for n in range(count):
        await publisher.publish(record(n))
    return bus


def values(batch: Any) -> list[bytes]:
    return [r.value for records in batch.values() for r in records]


async def test_a_consumer_owns_partitions_once_started_and_fetches_in_order() -> None:
    bus = await published(3)
    consumer = MemoryConsumer(bus, [TOPIC], max_records=2)
    assert consumer.assignment() == set()
    await consumer.start()
    assert consumer.assignment() == {TP}
    assert values(await consumer.getmany()) == [b"0", b"1"]
    assert [r.offset for r in (await consumer.getmany())[TP]] == [2]
    assert await consumer.getmany() == {}
    assert (await consumer.position(TP), consumer.highwater(TP)) == (3, 3)
    assert [r.value for r in bus.topic(TOPIC)] == [b"0", b"1", b"2"]


async def test_a_fetch_waits_for_a_record_to_arrive() -> None:
    bus = MemoryBus()
    consumer = MemoryConsumer(bus, [TOPIC])
    await consumer.start()
    fetch = asyncio.create_task(consumer.getmany(timeout_ms=5000))
    await asyncio.sleep(0.01)
    assert not fetch.done()
    await MemoryPublisher(bus).publish(record(7))
    assert values(await asyncio.wait_for(fetch, 1.0)) == [b"7"]
    assert consumer.fetches == 1


async def test_a_paused_partition_returns_nothing_until_resumed() -> None:
    bus = await published(2)
    consumer = MemoryConsumer(bus, [TOPIC])
    await consumer.start()
    consumer.pause(TP)
    assert consumer.paused() == {TP}
    assert await consumer.getmany(timeout_ms=10) == {}
    consumer.resume(TP)
    assert values(await consumer.getmany()) == [b"0", b"1"]


async def test_seek_moves_the_position_back_or_to_the_beginning() -> None:
    bus = await published(3)
    consumer = MemoryConsumer(bus, [TOPIC])
    await consumer.start()
    await consumer.getmany()
    consumer.seek(TP, 1)
    assert values(await consumer.getmany()) == [b"1", b"2"]
    await consumer.seek_to_beginning()
    assert values(await consumer.getmany()) == [b"0", b"1", b"2"]


async def test_only_owned_partitions_can_be_sought_paused_or_committed() -> None:
    consumer = MemoryConsumer(await published(1), [TOPIC])
    stranger = TopicPartition("kk.other", 0)
    with pytest.raises(IllegalStateError):
        await consumer.commit({TP: 1})  # not started: nothing owned
    await consumer.start()
    for call in (
        lambda: consumer.seek(stranger, 0),
        lambda: consumer.pause(stranger),
        lambda: consumer.resume(stranger),
    ):
        with pytest.raises(IllegalStateError):
            call()
    with pytest.raises(IllegalStateError):
        await consumer.commit({stranger: 1})
    with pytest.raises(ValueError, match="positive"):
        consumer.seek(TP, -1)


async def test_the_next_member_starts_from_the_groups_committed_offsets() -> None:
    bus = await published(3)
    first = MemoryConsumer(bus, [TOPIC], group_id="g")
    await first.start()
    await first.getmany()
    await first.commit({TP: 2})
    await first.stop()
    assert first.assignment() == set()
    second = MemoryConsumer(bus, [TOPIC], group_id="g")
    await second.start()
    assert values(await second.getmany()) == [b"2"]
    other_group = MemoryConsumer(bus, [TOPIC], group_id="h")
    await other_group.start()
    assert values(await other_group.getmany()) == [b"0", b"1", b"2"]
    assert first.commits == [{TP: 2}] and await second.committed(TP) == 2


class Listener:
    def __init__(self, consumer: list[MemoryConsumer]) -> None:
        self.consumer = consumer
        self.calls: list[tuple[str, set[TopicPartition], set[TopicPartition]]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.calls.append(("revoked", revoked, self.consumer[0].assignment()))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.calls.append(("assigned", assigned, self.consumer[0].assignment()))
        await self.consumer[0].seek_to_beginning(*assigned)  # as the rewind after a data loss


async def test_a_rebalance_tells_the_listener_and_restarts_from_the_committed_offsets() -> None:
    bus = await published(3)
    holder: list[MemoryConsumer] = []
    listener = Listener(holder)
    consumer = MemoryConsumer(bus, [TOPIC], listener=listener)
    holder.append(consumer)
    await consumer.start()
    assert listener.calls == [("revoked", set(), set()), ("assigned", {TP}, {TP})]
    await consumer.getmany()
    await consumer.commit({TP: 2})
    consumer.pause(TP)
    await consumer.rebalance([TP])
    assert listener.calls[2:] == [("revoked", {TP}, {TP}), ("assigned", {TP}, {TP})]
    assert consumer.paused() == set()  # a new assignment forgets pauses
    assert values(await consumer.getmany()) == [b"0", b"1", b"2"]  # the listener's seek wins
    listener.consumer = []  # the listener now fails: logged, the rebalance goes on
    await consumer.rebalance([TP])
    assert values(await consumer.getmany()) == [b"2"]  # from the committed offset


async def test_errors_on_demand_and_partitions_by_key() -> None:
    bus = MemoryBus(partitions=4)
    publisher = MemoryPublisher(bus)
    for n in range(8):
        await publisher.publish(record(n, key=b"same"))
    [(tp, log)] = [(tp, log) for tp, log in bus.logs.items() if log]
    assert [r.offset for r in log] == list(range(8))  # one key, one partition, in order
    spread = [bus.append(record(n, key=bytes([65 + n]), topic="kk.spread")) for n in range(8)]
    assert len({r.partition for r in spread}) > 1  # other keys, other partitions
    consumer = MemoryConsumer(bus, [TOPIC])
    await consumer.start()
    assert consumer.assignment() == {TopicPartition(TOPIC, n) for n in range(4)}
    consumer.fetch_errors.append(RuntimeError("fetch"))
    consumer.commit_errors.append(RuntimeError("commit"))
    with pytest.raises(RuntimeError, match="fetch"):
        await consumer.getmany()
    with pytest.raises(RuntimeError, match="commit"):
        await consumer.commit({tp: 1})
    assert len(values(await consumer.getmany())) == 8
    await consumer.commit()  # no offsets: every position
    assert consumer.commits == [
        {TopicPartition(TOPIC, n): 8 if n == tp.partition else 0 for n in range(4)}
    ]
