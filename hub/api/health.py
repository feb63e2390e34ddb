"""Liveness, readiness and Prometheus metrics (unauthenticated, no personal data)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from hub.api.deps import StateDep
from hub.bus import HUB_TOPICS, list_topics
from hub.errors import BrokerError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {}})
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when the database answers and the broker has the hub's topics."""
    checks: dict[str, str] = {}
    try:
        async with state.db.sessions() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        topics = await list_topics(state.kafka, timeout_s=3.0)
        missing = sorted(set(HUB_TOPICS) - topics)
        checks["broker"] = "ok" if not missing else f"missing topics: {', '.join(missing)}"
    except BrokerError as exc:
        checks["broker"] = f"error: {exc}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: StateDep) -> PlainTextResponse:
    return PlainTextResponse(
        generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
