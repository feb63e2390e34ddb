"""A real HTTP server standing in for the hub's status endpoint, shared by the sandbox tests:
it records every push (in the shape a test asks for) and answers with scripted codes."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web


class FakeHub:
    """Records ``(path, Authorization, JSON body)``; subclasses may record other shapes."""

    def __init__(self, default_status: int = 204) -> None:
        self.pushes: list[Any] = []
        self.answers: list[int] = []  # status codes to answer in order; then the default
        self.default_status = default_status
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()

    async def record(self, request: web.Request) -> Any:
        return (request.path, request.headers.get("Authorization"), await request.json())

    async def _handle(self, request: web.Request) -> web.Response:
        self.pushes.append(await self.record(request))
        status = self.answers.pop(0) if self.answers else self.default_status
        async with self._arrived:
            self._arrived.notify_all()
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/agencies/{agency}/status", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout_s: float = 3.0) -> None:
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.pushes) >= count)
