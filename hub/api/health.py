"""Liveness, readiness and Prometheus metrics (unauthenticated, no personal data).

Every process serves these: ``serve`` on its API port, each ``worker`` on its own
``OBSERVABILITY_PORT`` (``create_health_app``), so Prometheus and an orchestrator can watch
each process. What "ready" means differs per process, so the process composes a
``Readiness`` of named probes and puts it on ``app.state.readiness``: the database and the
broker's topics for the API's process, consumers joined and every supervised task running
for all. An app without one (unit tests of the API) checks the database and the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from hub.api.deps import HubState, StateDep
from hub.bus import HUB_TOPICS, KafkaCluster, list_topics
from hub.db import Database
from hub.errors import BrokerError

router = APIRouter(tags=["health"])

Probe = Callable[[], Awaitable[str]]
"""Answers "ok", or a short reason (no personal data) why the process is not ready."""


@dataclass
class Readiness:
    """The named probes a process must pass to be ready, checked concurrently."""

    probes: dict[str, Probe] = field(default_factory=dict)

    async def check(self) -> tuple[bool, dict[str, str]]:
        names = list(self.probes)
        answers = await asyncio.gather(*(self.probes[name]() for name in names))
        checks = dict(zip(names, answers, strict=True))
        return all(answer == "ok" for answer in answers), checks


async def database_probe(db: Database) -> str:
    try:
        async with db.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means not ready
        return f"error: {type(exc).__name__}"
    return "ok"


async def broker_probe(kafka: KafkaCluster) -> str:
    try:
        topics = await list_topics(kafka, timeout_s=3.0)
    except BrokerError as exc:
        return f"error: {exc}"
    missing = sorted(set(HUB_TOPICS) - topics)
    return "ok" if not missing else f"missing topics: {', '.join(missing)}"


def default_readiness(state: HubState) -> Readiness:
    async def database() -> str:
        return await database_probe(state.db)

    async def broker() -> str:
        return await broker_probe(state.kafka)

    return Readiness({"database": database, "broker": broker})


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {}})
async def readyz(request: Request, state: StateDep) -> JSONResponse:
    """Ready when every probe of this process passes; 503 names what is not ok."""
    readiness: Readiness = getattr(request.app.state, "readiness", None) or default_readiness(state)
    ready, checks = await readiness.check()
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


ScrapeHook = Callable[[], Awaitable[None]]
"""Refreshes gauges read from elsewhere (the database) just before a scrape; the API's
process sets ``app.state.on_scrape`` (``hub/api/app.py``), workers have none."""


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, state: StateDep) -> PlainTextResponse:
    hooks: list[ScrapeHook] = getattr(request.app.state, "on_scrape", [])
    for hook in hooks:
        await hook()
    return PlainTextResponse(
        generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


def create_health_app(state: HubState, readiness: Readiness) -> FastAPI:
    """``/metrics``, ``/healthz`` and ``/readyz`` alone, for a process without the API."""
    from hub.api.app import TELEMETRY_OFF

    app = FastAPI(
        title="Diasyndesi worker",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=TELEMETRY_OFF,
    )
    app.state.hub = state
    app.state.readiness = readiness
    app.include_router(router)
    return app
