"""The consumers of one process and what happens to them when the broker lost its data
(decision 0009): this module owns both.

Lifecycle: one aiokafka consumer per consumer group, each run by a supervised task
(``Consumers.consume``). ``consume`` creates the consumer, starts it (a bounded call, retried
while the broker is away), hands it to the body (the projector's or a connector runner's
loop) and stops it when the body returns or raises. A body that raises ends the task; its
supervisor starts it again, which builds a fresh consumer that rejoins the group and resumes
from the committed offsets. The joined state of each group feeds the process's readiness.

Data loss: the marker topic is created with the hub's topics and never written, so when it
is gone the broker is new or lost everything. ``BrokerDataLoss.check``, run by the relay
before it publishes, notices that; one process (under a lease) re-creates the topics and
re-drives what is unfinished, and every process rewinds its consumers to the beginning of
the fresh logs (``Consumers.rewind_all``, ``RewindAfterDataLoss``). Only a process that runs
the relay checks, and only it creates the marker: a worker (re)started after the loss must
not re-create the marker before the relay has seen it gone and re-driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from aiokafka.errors import IllegalStateError

from hub.bus import (
    HUB_TOPICS,
    Consumer,
    ConsumerRebalanceListener,
    KafkaCluster,
    KafkaError,
    ensure_topics,
    list_topics,
    make_consumer,
)
from hub.db import Database
from hub.leases import Leases
from hub.logs import get_logger
from hub.outbox import redrive_unfinished
from hub.settings import ConsumerSettings
from hub.supervisor import Supervisor

log = get_logger(__name__)

MARKER_TOPIC = "kk.hub.marker"
"""Created with the hub topics and never written: if it is gone, the broker lost its data."""
RECOVERY_LEASE = "broker-recovery"
REWIND_WINDOW_S = 60.0
"""After a broker data loss, assignments are rewound for this long (the groups rejoin)."""


class ConsumerFactory(Protocol):
    """How ``Consumers`` makes a consumer (``make_consumer``; a ``MemoryConsumer`` in tests)."""

    def __call__(
        self,
        kafka: KafkaCluster,
        group_id: str,
        topics: Sequence[str],
        settings: ConsumerSettings,
        client_id: str,
        listener: ConsumerRebalanceListener | None = None,
    ) -> Consumer: ...


class Consumers:
    """This process's consumers, their joined state, and the rewind after a data loss."""

    def __init__(
        self,
        kafka: KafkaCluster,
        settings: ConsumerSettings,
        supervisor: Supervisor,
        *,
        new_consumer: ConsumerFactory = make_consumer,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.supervisor = supervisor
        self.new_consumer = new_consumer
        self._active: list[Consumer] = []
        self._joined: set[str] = set()  # groups whose current member here has joined
        self._stopping = asyncio.Event()
        self._rewind_until = 0.0
        self.data_loss_epoch = 0

    def stop(self) -> None:
        """No new consumer is started after this (bodies are stopped by their owners)."""
        self._stopping.set()

    def assigned(self, expected: int) -> bool:
        """True once ``expected`` consumers run and each owns partitions."""
        return len(self._active) == expected and all(c.assignment() for c in self._active)

    def not_joined(self, groups: Iterable[str]) -> list[str]:
        """Those of ``groups`` with no member here that has completed a join."""
        return [group for group in groups if group not in self._joined]

    async def consume(
        self,
        group: str,
        topics: list[str],
        body: Callable[[Consumer], Awaitable[None]],
        listener: ConsumerRebalanceListener | None = None,
    ) -> None:
        """Run ``body`` on a consumer of ``group`` until it returns (or raises)."""
        pause = 0.2
        while not self._stopping.is_set():
            rewind = RewindAfterDataLoss(self, listener, on_joined=lambda: self._joined.add(group))
            consumer = self.new_consumer(
                self.kafka, group, topics, self.settings, client_id=group, listener=rewind
            )
            rewind.consumer = consumer
            try:
                await asyncio.wait_for(
                    consumer.start(), self.settings.session_timeout_ms / 1000 * 2 + 5
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning(
                    "consumer waiting for the broker", group=group, error=type(exc).__name__
                )
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 5)
                await self._pause(pause)
                pause = min(pause * 2, 5.0)
                continue
            self._active.append(consumer)
            try:
                await body(consumer)
            finally:
                self._joined.discard(group)
                self._active.remove(consumer)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 10)
            return

    async def rewind_all(self) -> None:
        """The broker lost its data (the embedded broker restarted empty): every consumer of
        this process must read the fresh logs from the beginning. Their fetch positions, and
        any offsets they committed to the new broker since (Tansu accepts commits from members
        of the dead broker's groups), point into the old logs and would skip records published
        to the new one: the fault suite's two-minute outage lost referrals so. So rewind now,
        and again on each consumer's first assignment after this (within a minute), since
        the groups rejoin and a rejoin restores those committed offsets; later rejoins find
        offsets committed after the rewind. Re-reading is safe: agencies and the projector
        are idempotent, but each re-read record costs an agency call, so only twice."""
        self._rewind_until = asyncio.get_running_loop().time() + REWIND_WINDOW_S
        self.data_loss_epoch += 1
        for consumer in list(self._active):
            self.supervisor.start("rewind", functools.partial(self._rewind, consumer), oneshot=True)

    def rewinding(self) -> bool:
        return asyncio.get_running_loop().time() < self._rewind_until

    async def _rewind(self, consumer: Consumer, timeout_s: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._stopping.is_set():
            assigned = consumer.assignment()
            if assigned:
                with contextlib.suppress(IllegalStateError):  # a rebalance in between
                    await consumer.seek_to_beginning(*assigned)
                    log.warning("consumer rewound after broker data loss", partitions=len(assigned))
                    return
            if asyncio.get_running_loop().time() > deadline:
                log.error("consumer not rewound: no assignment after broker data loss")
                return
            await self._pause(0.2)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def close(self) -> None:
        """Stop whatever consumer is still open (after the tasks ended or were cancelled)."""
        for consumer in list(self._active):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)


class RewindAfterDataLoss(ConsumerRebalanceListener):  # type: ignore[misc]
    """Wraps a consumer's rebalance listener: notes that the member joined (readiness), and
    starts the first assignment after a broker data loss from the beginning of the fresh
    logs."""

    def __init__(
        self,
        consumers: Consumers,
        inner: ConsumerRebalanceListener | None,
        on_joined: Callable[[], None] = lambda: None,
    ) -> None:
        self.consumers = consumers
        self.inner = inner
        self.on_joined = on_joined
        self.consumer: Consumer | None = None
        self.rewound_epoch = consumers.data_loss_epoch

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.inner is not None:
            await self.inner.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.on_joined()  # called after every join, even with no partition for this member
        if self.inner is not None:
            await self.inner.on_partitions_assigned(assigned)
        epoch = self.consumers.data_loss_epoch
        due = self.rewound_epoch != epoch and self.consumers.rewinding()
        if assigned and self.consumer is not None and due:
            self.rewound_epoch = epoch
            await self.consumer.seek_to_beginning(*assigned)
            log.warning("assignment rewound after broker data loss", partitions=len(assigned))


class BrokerDataLoss:
    """Notices that the broker lost its data (its marker topic is gone) and recovers: one
    process, whichever takes the lease, re-creates the topics and re-drives every unfinished
    referral; each process then rewinds its consumers (``rewind``), the recovering one at
    once, the others when they see the lease's generation move."""

    def __init__(
        self,
        db: Database,
        kafka: KafkaCluster,
        topics: Sequence[str],
        *,
        rewind: Callable[[], Awaitable[None]],
        leases: Leases | None = None,
        check_s: float = 5.0,
    ) -> None:
        """``topics``: what this process uses; re-created with the hub's own and the marker."""
        self.db = db
        self.kafka = kafka
        self.topics = [
            *HUB_TOPICS,
            MARKER_TOPIC,
            *(topic for topic in topics if topic not in HUB_TOPICS),
        ]
        self.rewind = rewind
        self.leases = leases or Leases(db)
        self.check_s = check_s
        self._last_check = 0.0
        self._generation: int | None = None

    def check_soon(self) -> None:
        """Check before the next publish (after a publish error), so a loss is seen before
        the backlog lands on the new broker."""
        self._last_check = 0.0

    async def check(self) -> None:
        """At most every ``check_s``: is the marker still there? Raises BrokerError if the
        broker cannot be asked."""
        if time.monotonic() - self._last_check < self.check_s:
            return
        self._last_check = time.monotonic()
        # Producers auto-create topics they write to, so the hub's own topics reappearing
        # proves nothing; the marker topic is never written, so only the hub re-creates it.
        if MARKER_TOPIC in await list_topics(self.kafka):
            await self._follow()
            return
        # A new broker, or one that lost its data. One relay recovers (whichever holds the
        # lease); it checks again under the lease, since another may just have finished.
        if not await self.leases.acquire(RECOVERY_LEASE, ttl_s=60.0):
            return
        try:
            if MARKER_TOPIC in await list_topics(self.kafka):
                return
            log.warning("broker has no marker topic (new or lost its data); re-driving")
            await ensure_topics(self.kafka, [t for t in self.topics if t != MARKER_TOPIC])
            requeued = await redrive_unfinished(self.db)
            # The marker last: should the topics or the re-drive fail, the next check finds
            # it still missing and recovers again (the re-drive is idempotent).
            await ensure_topics(self.kafka, [MARKER_TOPIC])
            log.info("re-drive queued", records=requeued)
            self._generation = await self.leases.bump(RECOVERY_LEASE)
        finally:
            await self.leases.release(RECOVERY_LEASE)
        await self.rewind()

    async def _follow(self) -> None:
        """Another process recovered from a broker data loss: rewind this one's consumers."""
        generation = await self.leases.generation(RECOVERY_LEASE)
        if self._generation is None:
            self._generation = generation  # what had happened before this start
            return
        if generation != self._generation:
            self._generation = generation
            log.warning("another relay recovered from a broker data loss; rewinding")
            await self.rewind()
