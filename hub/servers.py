"""Run an ASGI app under uvicorn inside the current event loop, on a given or free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from hub.errors import ConfigurationError


@dataclass
class RunningServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
        except TimeoutError:
            self.server.force_exit = True
            await asyncio.wait_for(self.task, timeout_s)


async def start_server(app: ASGIApp, host: str, port: int, name: str) -> RunningServer:
    """Bind first (so port 0 gives a real port and a busy port fails clearly), then serve."""
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then;
    # with proto 0 every keep-alive response waited ~40 ms for a delayed ACK (measured).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"{name}: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    actual = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=3
    )
    server = uvicorn.Server(config)
    # The process owner (``diasyndesi up``/``serve``) handles signals for all servers at once.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"server:{name}")
    while not server.started:
        if task.done():
            task.result()
            raise ConfigurationError(f"{name}: server stopped during start")
        await asyncio.sleep(0.01)
    return RunningServer(server, task, host, actual)
