"""Development wiring: the embedded broker, the sandbox agencies and the dev credentials
around one hub, all in one process, for the integration tests and the benchmarks.
``diasyndesi up`` runs the same pieces as a process tree instead (``hub/up.py``); production
composes only the hub (``hub/runtime.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.broker import EmbeddedBroker
from hub.bus import HUB_TOPICS, KafkaCluster, ensure_topics
from hub.db import Database
from hub.registry import Registry
from hub.runtime import Hub
from hub.schema import ensure_schema
from hub.settings import AgencyConnection, Settings

if TYPE_CHECKING:
    from hub.sandboxes import Sandboxes


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
    """Broker, sandboxes and hub with dev credentials in one process: what ``make run``
    starts as a process tree, composed in-process for the integration tests and benchmarks."""

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
        from hub.auth import ensure_dev_credentials
        from hub.sandboxes import start_sandboxes

        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        await self.broker.astart()
        await ensure_topics(
            KafkaCluster.from_settings(self.settings, self.broker.bootstrap_servers), HUB_TOPICS
        )
        registry = Registry.load(self.settings.registry_dir)
        db = Database(self.settings.database)
        await ensure_schema(db, migrate=True)
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
