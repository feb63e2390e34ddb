"""Process composition: the hub (API, relay, projector, connector runners) and, in embedded
mode, the broker and sandbox agencies. ``diasyndesi up`` and the integration tests both
build on these two classes, so tests exercise exactly what ``make run`` starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from connectors.base import Connector, PollsStatus
from hub.api.app import create_app
from hub.api.deps import HubState
from hub.auth import ensure_dev_credentials
from hub.broker import EmbeddedBroker
from hub.bus import HUB_TOPICS, MARKER_TOPIC, KafkaPublisher, ensure_topics, make_consumer
from hub.connector_loop import ConnectorLoop
from hub.connector_runner import ConnectorRunner, DrainOnRevoke
from hub.db import Database
from hub.errors import BrokerError, ConfigurationError
from hub.factory import build_connector
from hub.logs import get_logger
from hub.mapping import Mapping, load_mapping
from hub.metrics import HubMetrics
from hub.outbox import redrive_unfinished
from hub.poller import StatusPoller
from hub.projector import Projector
from hub.registry import Registry
from hub.relay import Relay
from hub.retry_topics import connector_topics
from hub.sandboxes import Sandboxes, start_sandboxes
from hub.servers import RunningServer, start_server
from hub.settings import AgencyConnection, Settings
from schemas.events import TOPIC_DELIVERIES, TOPIC_REFERRALS, TOPIC_STATUS

log = get_logger(__name__)

REWIND_WINDOW_S = 60.0
"""After a broker data loss, assignments are rewound for this long (the groups rejoin)."""


def load_mappings(settings: Settings, registry: Registry) -> dict[str, Mapping]:
    """Validate every active agency's mapping; a bad one stops the start. Beyond the
    minimisation rules, an agency's programme code list may name only its own programmes
    (a programme code can itself be health data, e.g. DISABILITY_DAY_CARE)."""
    mappings = {}
    for agency in registry.active_agencies:
        path = settings.mappings_dir / agency.mapping
        mapping = load_mapping(path, agency.id, agency.family)
        own = {p.value for p in agency.programmes}
        for index, rule in enumerate(mapping.fields):
            if rule.source == "programmes" and rule.codes:
                foreign = sorted(set(mapping.codes[rule.codes]) - own)
                if foreign:
                    raise ConfigurationError(
                        f"{path}: fields.{index} ({rule.to}): code list {rule.codes!r} "
                        f"names programmes {foreign} that {agency.id} does not handle"
                    )
        mappings[agency.id] = mapping
    return mappings


class Hub:
    """API + relay + projector + connector runners over one database and one broker."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        connectors: Sequence[str] | None = None,
        serve_api: bool = True,
        run_relay: bool = True,
        run_projector: bool = True,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.metrics = HubMetrics()
        self.registry = Registry.load(settings.registry_dir)
        self.mappings = load_mappings(settings, self.registry)
        wanted = list(self.mappings) if connectors is None else list(connectors)
        self.connector_ids = wanted
        self.serve_api = serve_api
        self.run_relay = run_relay
        self.run_projector = run_projector
        self.db = Database(settings.database)
        self.publisher = KafkaPublisher(bootstrap, settings.producer, client_id="diasyndesi-hub")
        levels = len(settings.retry.topic_delays_s)
        self.topics = [
            *HUB_TOPICS,
            MARKER_TOPIC,
            *(t for agency in self.mappings for t in connector_topics(agency, levels)),
        ]
        self.relay = Relay(
            self.db,
            self.publisher,
            self.metrics,
            bootstrap=bootstrap,
            topics=self.topics,
            partitions=settings.topic_partitions,
            poll_s=settings.relay_poll_s,
            batch=settings.relay_batch,
            on_data_loss=self._rewind_consumers,
            stale_after_s=settings.redrive_stale_after_s,
        )
        self.projector = Projector(self.db, self.metrics)
        self.runners: dict[str, ConnectorRunner] = {}
        self.pollers: list[StatusPoller] = []
        self.api: RunningServer | None = None
        self._consumers: list[AIOKafkaConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._rewind_until = 0.0
        self.data_loss_epoch = 0

    @property
    def expected_consumers(self) -> int:
        return int(self.run_projector) + len(self.connector_ids)

    def consumers_assigned(self) -> bool:
        """True once every consumer of this process has joined its group and owns partitions
        (with Tansu a join takes half the session timeout)."""
        return len(self._consumers) == self.expected_consumers and all(
            c.assignment() for c in self._consumers
        )

    async def wait_consumers_assigned(self, timeout_s: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.consumers_assigned():
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerError(f"consumers not assigned within {timeout_s} s")
            await asyncio.sleep(0.05)

    @property
    def api_url(self) -> str:
        assert self.api is not None
        return self.api.url

    async def start(self) -> None:
        await self.db.create_all()
        try:
            await ensure_topics(
                self.bootstrap, self.topics, self.settings.topic_partitions, timeout_s=10
            )
        except BrokerError as exc:
            log.warning("broker not reachable at start; will keep trying", error=str(exc))
        if self.run_relay:  # only the process that owns the outbox re-drives it
            requeued = await redrive_unfinished(self.db)
            if requeued:
                log.info("re-driving unfinished referrals", records=requeued)
        if self.serve_api:
            state = HubState(
                self.settings,
                self.db,
                self.registry,
                self.metrics,
                self.bootstrap,
                wake_relay=self.relay.wakeup.set,
            )
            self.api = await start_server(
                create_app(state), self.settings.api_host, self.settings.api_port, "api"
            )
        self._spawn("producer", self._connect_producer_then_relay())
        if self.run_projector:
            self._spawn(
                "projector",
                self._consume(
                    "diasyndesi.projector", [TOPIC_DELIVERIES, TOPIC_STATUS], self.projector.run
                ),
            )
        for agency_id in self.connector_ids:
            agency = self.registry.agencies[agency_id]
            runner = ConnectorRunner(
                build_connector(agency, self.settings),
                self.mappings[agency_id],
                self.publisher,
                self.settings.retry,
                self.metrics,
                concurrency=self.settings.agency_concurrency,
            )
            self.runners[agency_id] = runner
            polled = build_connector(agency, self.settings)
            if isinstance(polled, PollsStatus):
                self._spawn(f"poller:{agency_id}", self._poll(polled))
            self._spawn(
                f"connector:{agency_id}",
                self._consume(
                    f"diasyndesi.connector.{agency_id}",
                    [TOPIC_REFERRALS, *runner.topics],
                    ConnectorLoop(
                        runner, commit_timeout_s=self.settings.consumer.commit_timeout_s
                    ).run,
                    DrainOnRevoke(runner),
                ),
            )

    async def _poll(self, connector: Connector) -> None:
        poller = StatusPoller(
            self.db, connector, self.publisher, self.metrics, interval_s=self.settings.status_poll_s
        )
        self.pollers.append(poller)
        await connector.start()
        try:
            await poller.run()
        finally:
            await connector.stop()

    def _spawn(self, name: str, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("component crashed", component=name)
                raise

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def _connect_producer_then_relay(self) -> None:
        pause = 0.2
        while not self._stopping.is_set():
            try:
                await self.publisher.start()
                break
            except BrokerError as exc:
                log.warning("producer waiting for the broker", error=str(exc))
                await self._pause(pause)
                pause = min(pause * 2, 5.0)
        if self.run_relay and not self._stopping.is_set():
            await self.relay.run()

    async def _consume(
        self,
        group: str,
        topics: list[str],
        body: Callable[[AIOKafkaConsumer], Awaitable[None]],
        listener: ConsumerRebalanceListener | None = None,
    ) -> None:
        pause = 0.2
        while not self._stopping.is_set():
            rewind = RewindAfterDataLoss(self, listener)
            consumer = make_consumer(
                self.bootstrap,
                group,
                topics,
                self.settings.consumer,
                client_id=group,
                listener=rewind,
            )
            rewind.consumer = consumer
            try:
                await asyncio.wait_for(
                    consumer.start(), self.settings.consumer.session_timeout_ms / 1000 * 2 + 5
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
            self._consumers.append(consumer)
            try:
                await body(consumer)
            finally:
                self._consumers.remove(consumer)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 10)
            return

    async def _rewind_consumers(self) -> None:
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
        for consumer in list(self._consumers):
            self._spawn("rewind", self._rewind(consumer))

    def rewinding(self) -> bool:
        return asyncio.get_running_loop().time() < self._rewind_until

    async def _rewind(self, consumer: AIOKafkaConsumer, timeout_s: float = 60.0) -> None:
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

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Graceful: finish in-flight work, commit, leave the groups, close everything."""
        self._stopping.set()
        self.relay.stop()
        self.projector.stop()
        for runner in self.runners.values():
            runner.stop()
        for poller in self.pollers:
            poller.stop()
        await self._finish_tasks(timeout_s)

    async def abort(self) -> None:
        """Crash-like stop for tests: cancel everything now, commit nothing more."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await self._finish_tasks(10.0)

    async def _finish_tasks(self, timeout_s: float) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for consumer in list(self._consumers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)
        await self.publisher.stop()
        if self.api is not None:
            await self.api.stop()
        await self.db.dispose()


class RewindAfterDataLoss(ConsumerRebalanceListener):  # type: ignore[misc]
    """Wraps a consumer's rebalance listener: the first assignment after the hub saw the
    broker lose its data starts from the beginning of the fresh logs."""

    def __init__(self, hub: Hub, inner: ConsumerRebalanceListener | None) -> None:
        self.hub = hub
        self.inner = inner
        self.consumer: AIOKafkaConsumer | None = None
        self.rewound_epoch = hub.data_loss_epoch

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.inner is not None:
            await self.inner.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self.inner is not None:
            await self.inner.on_partitions_assigned(assigned)
        due = self.rewound_epoch != self.hub.data_loss_epoch and self.hub.rewinding()
        if assigned and self.consumer is not None and due:
            self.rewound_epoch = self.hub.data_loss_epoch
            await self.consumer.seek_to_beginning(*assigned)
            log.warning("assignment rewound after broker data loss", partitions=len(assigned))


def _merge_connections(
    sandboxes: dict[str, AgencyConnection], settings: Settings
) -> dict[str, AgencyConnection]:
    """Sandbox connections, overridden field by field by what the operator set, so e.g. only
    ``AGENCIES__DYPA__BASE_URL`` can point ΔΥΠΑ through a fault proxy and keep its secret."""
    merged = dict(sandboxes)
    for agency, configured in settings.agencies.items():
        base = merged.get(agency)
        merged[agency] = (
            base.model_copy(update=configured.model_dump(exclude_unset=True))
            if base is not None
            else configured
        )
    return merged


class Embedded:
    """Everything ``make run`` starts: broker, sandboxes, hub, with dev credentials."""

    def __init__(self, settings: Settings) -> None:
        if "session_timeout_ms" not in settings.consumer.model_fields_set:
            # Tansu finishes a group join after half the session timeout: keep it short here.
            consumer = settings.consumer.model_copy(
                update={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
            )
            settings = settings.model_copy(update={"consumer": consumer})
        if "status_poll_s" not in settings.model_fields_set:
            settings = settings.model_copy(update={"status_poll_s": 2.0})  # sandboxes are local
        self.settings = settings
        self.broker = EmbeddedBroker(settings.embedded_broker_port)
        self.sandboxes: Sandboxes | None = None
        self.hub: Hub | None = None
        self.credentials: dict[str, dict[str, str]] = {}

    @property
    def credentials_path(self) -> str:
        return str(self.settings.var_dir / "dev-credentials.json")

    async def start(self) -> None:
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        await self.broker.astart()
        await ensure_topics(
            self.broker.bootstrap_servers,
            (*HUB_TOPICS, MARKER_TOPIC),
            self.settings.topic_partitions,
        )
        registry = Registry.load(self.settings.registry_dir)
        db = Database(self.settings.database)
        await db.create_all()
        self.credentials = await ensure_dev_credentials(
            db, registry, self.settings.var_dir / "dev-credentials.json"
        )
        await db.dispose()
        self.sandboxes = await start_sandboxes(
            self.settings, self.settings.api_url, self.credentials["agencies"]
        )
        settings = self.settings.model_copy(
            update={"agencies": _merge_connections(self.sandboxes.connections, self.settings)}
        )
        self.hub = Hub(settings, self.broker.bootstrap_servers)
        await self.hub.start()

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
        if self.sandboxes is not None:
            await self.sandboxes.stop()
        await self.broker.astop()
