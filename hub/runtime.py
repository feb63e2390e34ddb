"""Process composition: which long-running tasks a hub process runs (API, relay, projector,
connector runners, status pollers), over one database and one broker, each supervised;
``serve`` and ``worker`` build their ``Hub`` here. The development wiring around a hub (the
embedded broker, sandboxes, dev credentials) is ``hub/embedded.py``; ``diasyndesi up`` runs
the pieces as separate processes (``hub/up.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence

from diasyndesi_sdk.connector import Connector, PollsStatus
from hub.api.app import create_app
from hub.api.deps import HubState
from hub.api.health import Probe, Readiness, broker_probe, create_health_app, database_probe
from hub.bus import HUB_TOPICS, KafkaCluster, KafkaPublisher, ensure_topics
from hub.connector_loop import ConnectorLoop, DrainOnRevoke
from hub.connector_runner import ConnectorRunner
from hub.consumers import BrokerDataLoss, Consumers
from hub.db import Database
from hub.errors import BrokerError
from hub.families import load_registry
from hub.leases import Leases
from hub.logs import get_logger
from hub.mapping_policy import load_mappings
from hub.metrics import HubMetrics
from hub.overdue_job import OverdueJob
from hub.poller import StatusPoller
from hub.projector import Projector
from hub.relay import Relay
from hub.retry_topics import connector_topics
from hub.schema import ensure_schema
from hub.servers import RunningServer, start_server
from hub.settings import Settings
from hub.supervisor import Supervisor
from hub.webhook_dispatch import WebhookDispatcher
from hub.webhook_secrets import secret_key
from schemas.events import TOPIC_DELIVERIES, TOPIC_REFERRALS, TOPIC_STATUS

log = get_logger(__name__)


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
        observability: bool = False,
    ) -> None:
        """``observability``: serve ``/metrics``, ``/healthz`` and ``/readyz`` on
        ``OBSERVABILITY_HOST:OBSERVABILITY_PORT`` (a process without the API, i.e. a worker;
        the API serves them itself)."""
        self.settings = settings
        self.bootstrap = bootstrap
        self.kafka = KafkaCluster.from_settings(settings, bootstrap)
        self.metrics = HubMetrics()
        self.registry = load_registry(settings)  # checked against the installed families
        self.mappings = load_mappings(settings, self.registry)
        wanted = list(self.mappings) if connectors is None else list(connectors)
        self.connector_ids = wanted
        self.serve_api = serve_api
        self.run_relay = run_relay
        self.run_projector = run_projector
        self.observability = observability and not serve_api
        self.db = Database(settings.database)
        self.db.on_write_wait = self.metrics.db_write_wait.observe
        self.publisher = KafkaPublisher(self.kafka, settings.producer, client_id="diasyndesi-hub")
        levels = len(settings.retry.topic_delays_s)
        self.topics = [
            *HUB_TOPICS,
            *(t for agency in self.mappings for t in connector_topics(agency, levels)),
        ]
        self.supervisor = Supervisor(
            self.metrics,
            initial_s=settings.task_restart_initial_s,
            max_s=settings.task_restart_max_s,
        )
        self.consumers = Consumers(self.kafka, settings.consumer, self.supervisor)
        leases = Leases(self.db)
        # Only the relay's process looks for a broker data loss (hub/consumers.py).
        self.data_loss = (
            BrokerDataLoss(
                self.db, self.kafka, self.topics, rewind=self.consumers.rewind_all, leases=leases
            )
            if run_relay
            else None
        )
        self.relay = Relay(
            self.db,
            self.publisher,
            self.metrics,
            data_loss=self.data_loss,
            poll_s=settings.relay_poll_s,
            batch=settings.relay_batch,
            stale_after_s=settings.redrive_stale_after_s,
            leases=leases,
        )
        self.projector = Projector(self.db, self.metrics)
        self.overdue = OverdueJob(
            self.db, self.metrics, leases, interval_s=settings.push.overdue_check_s
        )
        self.webhooks = WebhookDispatcher(
            self.db,
            settings.push,
            self.metrics,
            secret_key(settings) if run_relay else None,
            production=settings.environment == "production",
        )
        self.state: HubState | None = None
        self.runners: dict[str, ConnectorRunner] = {}
        self.pollers: dict[str, StatusPoller] = {}
        self.api: RunningServer | None = None
        self.health: RunningServer | None = None
        self._polls_status = False
        self._producer_ready = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def expected_consumers(self) -> int:
        return int(self.run_projector) + len(self.connector_ids)

    def consumers_assigned(self) -> bool:
        """True once every consumer of this process has joined its group and owns partitions
        (with Tansu a join takes half the session timeout)."""
        return self.consumers.assigned(self.expected_consumers)

    async def wait_consumers_assigned(self, timeout_s: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.consumers_assigned():
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerError(f"consumers not assigned within {timeout_s} s")
            await asyncio.sleep(0.05)

    @property
    def groups(self) -> list[str]:
        """The consumer groups this process is a member of (one consumer each)."""
        projector = ["diasyndesi.projector"] if self.run_projector else []
        return projector + [f"diasyndesi.connector.{a}" for a in self.connector_ids]

    def tasks_check(self) -> str:
        """Readiness of the supervised tasks: "ok", or the names of those that are down."""
        down = self.supervisor.down()
        return "ok" if not down else f"down: {', '.join(down)}"

    def consumers_check(self) -> str:
        """Readiness of the consumers: "ok" once each group has a member here that joined
        (it may own no partition if the group has more members than partitions)."""
        waiting = self.consumers.not_joined(self.groups)
        return "ok" if not waiting else f"not joined: {', '.join(waiting)}"

    def readiness(self) -> Readiness:
        """What this process needs to be ready: its consumers joined and every supervised
        task running; the API's process also needs the database and the broker's topics; a
        worker that polls an agency needs the database."""

        async def tasks() -> str:
            return self.tasks_check()

        async def consumers() -> str:
            return self.consumers_check()

        probes: dict[str, Probe] = {"tasks": tasks, "consumers": consumers}
        if self.serve_api or self.run_relay or self.run_projector or self._polls_status:
            probes["database"] = functools.partial(database_probe, self.db)
        if self.serve_api:
            probes["broker"] = functools.partial(broker_probe, self.kafka)
        return Readiness(probes)

    @property
    def api_url(self) -> str:
        assert self.api is not None
        return self.api.url

    @property
    def health_url(self) -> str:
        """Where this process serves /metrics, /healthz and /readyz."""
        server = self.api or self.health
        assert server is not None
        return server.url

    def _state(self) -> HubState:
        self.state = HubState(
            self.settings,
            self.db,
            self.registry,
            self.metrics,
            self.kafka,
            wake_relay=self.relay.wakeup.set,
        )
        return self.state

    async def start(self) -> None:
        # The connector families (zeep, lxml, …) load only where connectors run: ``serve``
        # stays tens of megabytes smaller.
        from hub.factory import build_connector

        polled: dict[str, Connector] = {}
        for agency_id in self.connector_ids:
            agency = self.registry.agencies[agency_id]
            self.runners[agency_id] = ConnectorRunner(
                build_connector(agency, self.settings),
                self.mappings[agency_id],
                self.publisher,
                self.settings.retry,
                self.metrics,
                concurrency=self.settings.agency_concurrency,
            )
            connector = build_connector(agency, self.settings)
            if isinstance(connector, PollsStatus):
                polled[agency_id] = connector
        self._polls_status = bool(polled)
        await self._check_database()
        try:
            # Not the marker topic: BrokerDataLoss creates it when it finds the broker new or
            # emptied, and re-drives what is unfinished then (hub/consumers.py).
            await ensure_topics(self.kafka, self.topics, timeout_s=10)
        except BrokerError as exc:
            log.warning("broker not reachable at start; will keep trying", error=str(exc))
        if self.serve_api:
            app = create_app(self._state())
            app.state.readiness = self.readiness()
            self.api = await start_server(
                app, self.settings.api_host, self.settings.api_port, "api"
            )
        elif self.observability:
            self.health = await start_server(
                create_health_app(self._state(), self.readiness()),
                self.settings.observability_host,
                self.settings.observability_port,
                "metrics and health",
            )
        supervise = self.supervisor.start
        supervise("producer", self._connect_producer, oneshot=True)
        if self.run_relay:
            supervise("relay", self._run_relay)
            supervise("overdue", self.overdue.run)
            supervise("webhooks", self.webhooks.run)
        if self.run_projector:
            supervise(
                "projector",
                functools.partial(
                    self.consumers.consume,
                    "diasyndesi.projector",
                    [TOPIC_DELIVERIES, TOPIC_STATUS],
                    self.projector.run,
                ),
            )
        for agency_id, runner in self.runners.items():
            if agency_id in polled:
                supervise(f"poller:{agency_id}", functools.partial(self._poll, polled[agency_id]))
            supervise(
                f"connector:{agency_id}",
                functools.partial(
                    self.consumers.consume,
                    f"diasyndesi.connector.{agency_id}",
                    [TOPIC_REFERRALS, *runner.topics],
                    ConnectorLoop(
                        runner, commit_timeout_s=self.settings.consumer.commit_timeout_s
                    ).run,
                    DrainOnRevoke(runner),
                ),
            )

    async def _check_database(self) -> None:
        """A process that uses the database needs this release's schema: development
        migrates it (only ``serve``: workers do not race it), production refuses to start.
        An unreachable or misconfigured database is one clear line, not a traceback."""
        if not (self.serve_api or self.run_relay or self.run_projector or self._polls_status):
            return
        migrate = self.settings.environment == "development" and self.run_relay
        await ensure_schema(self.db, migrate=migrate)

    async def _poll(self, connector: Connector) -> None:
        poller = StatusPoller(
            self.db,
            connector,
            self.publisher,
            self.metrics,
            interval_s=self.settings.status_poll_s,
            leases=Leases(self.db),
        )
        self.pollers[connector.agency] = poller  # a restart replaces the one that ended
        await connector.start()
        try:
            await poller.run()
        finally:
            await connector.stop()

    async def _connect_producer(self) -> None:
        pause = 0.2
        while not self._stopping.is_set():
            try:
                await self.publisher.start()
                self._producer_ready.set()
                return
            except BrokerError as exc:
                log.warning("producer waiting for the broker", error=str(exc))
                await self._pause(pause)
                pause = min(pause * 2, 5.0)

    async def _run_relay(self) -> None:
        """The relay, once the producer is connected (a restart does not reconnect it)."""
        ready = asyncio.ensure_future(self._producer_ready.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stopping.cancel()
        if not self._stopping.is_set():
            await self.relay.run()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Graceful: finish in-flight work, commit, leave the groups, close everything."""
        self._stopping.set()
        if self.state is not None:
            self.state.closing.set()  # event streams end
        self.consumers.stop()
        self.relay.stop()
        self.overdue.stop()
        self.webhooks.stop()
        self.projector.stop()
        for runner in self.runners.values():
            runner.stop()
        for poller in self.pollers.values():
            poller.stop()
        await self.supervisor.stop(timeout_s)
        await self._close()

    async def abort(self) -> None:
        """Crash-like stop for tests: cancel everything now, commit nothing more."""
        self._stopping.set()
        if self.state is not None:
            self.state.closing.set()
        self.consumers.stop()
        await self.supervisor.abort()
        await self._close()

    async def _close(self) -> None:
        await self.consumers.close()
        await self.publisher.stop()
        for server in (self.api, self.health):
            if server is not None:
                await server.stop()
        await self.db.dispose()
