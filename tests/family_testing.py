"""What the families' own tests share (``connectors/<family>/tests``): connectors started
on demand and stopped with the test, and calls to a sandbox's ``/_sandbox/*`` routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import httpx

from diasyndesi_sdk.connector import Connector

C = TypeVar("C", bound=Connector)


@asynccontextmanager
async def started_connectors(
    build: Callable[..., C],
) -> AsyncIterator[Callable[..., Awaitable[C]]]:
    """A factory: ``await factory(**overrides)`` builds with ``build``, starts and returns a
    connector; every one is stopped when the block ends."""
    started: list[C] = []

    async def factory(*args: Any, **overrides: Any) -> C:
        connector = build(*args, **overrides)
        await connector.start()
        started.append(connector)
        return connector

    try:
        yield factory
    finally:
        for connector in started:
            await connector.stop()


async def asgi_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to ``app`` in process, its lifespan entered (ASGITransport
    does not run it), so a sandbox's status pusher opens and closes as when served."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            yield client


async def set_faults(admin_url: str, **knobs: Any) -> dict[str, Any]:
    """``POST {admin_url}/_sandbox/faults`` (knobs are replaced whole; none clears them)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{admin_url}/_sandbox/faults", json=knobs, ssl=False) as response,
    ):
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def sandbox_get(admin_url: str, path: str) -> Any:
    """``GET {admin_url}/_sandbox/{path}`` (received, stats)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{admin_url}/_sandbox/{path}", ssl=False) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()
