"""The FastAPI application: routes, the body-size guard and privacy-safe error bodies."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.api import (
    agencies,
    centre_events,
    health,
    information_requests,
    ops,
    referrals,
    webhooks,
    withdrawals,
)
from hub.api.deps import HubState
from hub.logs import get_logger

log = get_logger(__name__)

DATABASE_RETRY_AFTER_S = 5

TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}
"""FastAPI's own OpenTelemetry hooks, off: the hub's metrics are its Prometheus registry,
and FastAPI's log records of validation failures could carry submitted values. Off, FastAPI
also skips asking OpenTelemetry for its providers on every request (1–2 % of ``serve``'s
CPU under load, profiled)."""


class BodySizeLimit:
    """Refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
        seen = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Answer now and tell the app the client went away; whatever it
                    # tries to send afterwards is dropped.
                    if not started and not refused:
                        refused = True
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body is larger than {self.limit} bytes"}, status_code=413
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _safe_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Field-level errors without the submitted values (they may be an AMKA or a name)."""
    out = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        field = (
            ".".join(loc[1:])
            if loc and loc[0] in {"body", "header", "query", "path"}
            else ".".join(loc)
        )
        out.append(
            {"loc": loc, "field": field, "msg": error.get("msg", ""), "type": error.get("type", "")}
        )
    return out


def create_app(state: HubState) -> FastAPI:
    app = FastAPI(
        title="Diasyndesi",
        version="0.1.0",
        summary="Integration hub between Community Centres and the agencies they refer to",
        telemetry=TELEMETRY_OFF,
    )
    app.state.hub = state
    app.state.on_scrape = [functools.partial(information_requests.refresh_overdue_gauge, state)]
    app.include_router(referrals.router)
    app.include_router(information_requests.router)
    app.include_router(withdrawals.router)
    app.include_router(centre_events.router)
    app.include_router(webhooks.router)
    app.include_router(agencies.router)
    app.include_router(ops.router)
    app.include_router(health.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.method == "GET":
            pass  # a bad query (the caseload's filters) is not a refused submission
        elif any(err.get("type") == "json_invalid" for err in exc.errors()):
            state.metrics.intake_rejected.labels("malformed_json").inc()
        else:
            state.metrics.intake_rejected.labels("invalid").inc()
        return JSONResponse({"detail": _safe_errors(exc)}, status_code=422)

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(OSError)
    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        """The database is down or overloaded: nothing was accepted, try again (a retried
        POST with the same Idempotency-Key is safe). No driver message: it could quote
        a statement's values."""
        log.warning("request failed: database unavailable", error=type(exc).__name__)
        state.metrics.intake_rejected.labels("database_unavailable").inc()
        return JSONResponse(
            {"detail": "the database is unavailable; try again shortly"},
            status_code=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    app.add_middleware(BodySizeLimit, limit=state.settings.max_body_bytes)
    return app
