"""The bare baseline of ``diasyndesi bench``: what the same connectors and sandboxes can do
with nothing of the hub around them (no database, outbox, relay, projector or API).

An aiokafka producer puts canonical referrals on a topic; one consumer group per agency (in
a child process, as the hub's workers are) maps each record with the agency's real mapping,
delivers it with the same connector class the hub builds, and publishes a small "done"
record; the driver reads those to know when all of a referral's agencies have it. The
sandboxes run in their own process, as in ``make run``, but push no statuses (there is no
hub to push to).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from hub import event_loop
from hub.bus import KafkaCluster, ensure_topics
from hub.factory import build_connector
from hub.registry import Registry
from hub.samples import sample_referral
from hub.settings import Settings
from schemas.referral import Referral, ReferralRequest

REFERRALS = "bench.bare.referrals"
DONE = "bench.bare.done"
READY_LINE = "bare worker ready"


async def run_worker(bootstrap: str, agencies: list[str]) -> None:
    """Child process: one consumer group per agency, deliver, publish done, commit."""
    from hub.mapping_policy import load_mappings

    settings = Settings()
    registry = Registry.load(settings.registry_dir)
    mappings = load_mappings(settings, registry)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    consumers = []
    tasks = []
    for agency in agencies:
        connector = build_connector(registry.agencies[agency], settings)
        await connector.start()
        consumer = AIOKafkaConsumer(
            REFERRALS,
            bootstrap_servers=bootstrap,
            group_id=f"bench.bare.{agency}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_max_wait_ms=settings.consumer.fetch_max_wait_ms,
        )
        await consumer.start()
        consumers.append(consumer)
        limit = asyncio.Semaphore(settings.agency_concurrency)

        async def deliver_one(
            record: Any,
            agency: str = agency,
            connector: Any = connector,
            limit: asyncio.Semaphore = limit,
        ) -> None:
            from diasyndesi_sdk.connector import Delivery, idempotency_key

            message = orjson.loads(record.value)
            referral, event_id = message["referral"], message["event_id"]
            if agency not in referral["routed"]:
                return
            payload = mappings[agency].apply(referral)
            async with limit:
                await connector.deliver(
                    Delivery(
                        event_id=event_id,
                        referral_id=referral["id"],
                        agency=agency,
                        idempotency_key=idempotency_key(event_id, agency),
                        payload=payload,
                    )
                )
            await producer.send(DONE, agency.encode(), key=referral["id"].encode())

        async def loop(consumer: AIOKafkaConsumer = consumer, deliver: Any = deliver_one) -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=200)
                records = [r for rs in batches.values() for r in rs]
                if records:
                    await asyncio.gather(*(deliver(r) for r in records))
                    await consumer.commit()

        tasks.append(asyncio.create_task(loop()))
    while not all(c.assignment() for c in consumers):  # noqa: ASYNC110 - aiokafka has no event
        await asyncio.sleep(0.05)
    print(READY_LINE, flush=True)
    await asyncio.gather(*tasks)


class Completions:
    """Which agencies have each referral; a referral's future resolves (with the time) once
    all its agencies do. An answer may come before the referral is expected: kept."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self.waiting: dict[str, tuple[set[str], asyncio.Future[float]]] = {}

    def expect(self, referral_id: str, agencies: list[str]) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[referral_id] = (set(agencies), future)
        self.done(referral_id, None, time.perf_counter())
        return future

    def done(self, referral_id: str, agency: str | None, now: float) -> None:
        seen = self.seen.setdefault(referral_id, set())
        if agency is not None:
            seen.add(agency)
        entry = self.waiting.get(referral_id)
        if entry and entry[0] <= seen:
            del self.waiting[referral_id]
            del self.seen[referral_id]
            if not entry[1].done():
                entry[1].set_result(now)


class TopicTail:
    """Reads every partition of one topic from its end (no group), handing each record and
    the time it arrived to ``on_record``."""

    def __init__(self, bootstrap: str, topic: str, on_record: Callable[[Any, float], None]):
        self.topic = topic
        self.on_record = on_record
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=20)
        self._reader: asyncio.Task[None] | None = None

    async def start(self, partitions: int) -> None:
        await self.consumer.start()
        parts = [TopicPartition(self.topic, p) for p in range(partitions)]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.consumer.stop()

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    self.on_record(record, now)


class BareDriver:
    """The bench side: publish referrals and learn when each is delivered everywhere."""

    def __init__(self, bootstrap: str, registry: Registry) -> None:
        self.bootstrap = bootstrap
        self.registry = registry
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
        self.completions = Completions()
        self.tail = TopicTail(
            bootstrap,
            DONE,
            lambda record, now: self.completions.done(
                record.key.decode(), record.value.decode(), now
            ),
        )

    async def start(self, partitions: int) -> None:
        await ensure_topics(KafkaCluster(self.bootstrap, partitions=partitions), [REFERRALS, DONE])
        await self.producer.start()
        await self.tail.start(partitions)

    async def stop(self) -> None:
        await self.tail.stop()
        await self.producer.stop()

    async def referral(self, seed: int) -> tuple[float, float]:
        """Publish one referral; returns (seconds to publish, seconds to all delivered)."""
        started = time.perf_counter()
        request = ReferralRequest.model_validate(sample_referral(seed=seed, programmes=FOUR))
        referral = Referral(
            **request.model_dump(),
            id=str(uuid.uuid4()),
            created_at=datetime.now(UTC),
            municipality=self.registry.centres[request.centre].municipality,
            routed=self.registry.route(request.centre, list(request.programmes)),
        )
        message = {"event_id": str(uuid.uuid4()), "referral": referral.model_dump(mode="json")}
        future = self.completions.expect(referral.id, list(referral.routed))
        await self.producer.send_and_wait(
            REFERRALS, orjson.dumps(message), key=referral.id.encode()
        )
        sent = time.perf_counter()
        done = await asyncio.wait_for(future, 60)
        return sent - started, done - started


FOUR = ["GMI", "UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY", "HELP_AT_HOME"]


async def closed_loop(
    one: Callable[[int], Awaitable[tuple[float, float]]], in_flight: int, duration_s: float
) -> tuple[int, float, list[float]]:
    """``in_flight`` loops, each starting the next referral when its last is done, for
    ``duration_s``; returns (completed, seconds, end-to-end latencies)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s
    counter = iter(range(10**9))

    async def loop() -> None:
        while time.perf_counter() < stop_at:
            latencies.append((await one(next(counter)))[1])

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    return len(latencies), time.perf_counter() - started, latencies


async def open_loop(
    one: Callable[[int], Coroutine[Any, Any, tuple[float, float]]], rate: float, duration_s: float
) -> list[tuple[float, float]]:
    """Start a referral every ``1/rate`` s for ``duration_s`` whatever the answers do."""
    tasks: list[asyncio.Task[tuple[float, float]]] = []
    started = time.perf_counter()
    for i in range(int(rate * duration_s)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(1_000_000 + i)))
    return list(await asyncio.gather(*tasks))


if __name__ == "__main__":  # python -m hub.bench_bare BOOTSTRAP AGENCY...
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    event_loop.run(run_worker(sys.argv[1], sys.argv[2:]))
