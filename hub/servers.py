"""Run an ASGI app under uvicorn inside the current event loop, on a given or free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp

from hub.errors import ConfigurationError

if TYPE_CHECKING:
    from diasyndesi_sdk.sandbox import ServerTls


@dataclass
class RunningServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
        except TimeoutError:
            self.server.force_exit = True
            await asyncio.wait_for(self.task, timeout_s)


async def start_server(
    app: ASGIApp, host: str, port: int, name: str, tls: ServerTls | None = None
) -> RunningServer:
    """Bind first (so port 0 gives a real port and a busy port fails clearly), then serve;
    over TLS with ``tls`` (a sandbox of a mutual-TLS agency)."""
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
    options = {}
    if tls is not None:
        options = {
            "ssl_certfile": str(tls.certfile),
            "ssl_keyfile": str(tls.keyfile),
            "ssl_ca_certs": str(tls.ca_certs) if tls.ca_certs else None,
            "ssl_cert_reqs": ssl.CERT_OPTIONAL if tls.ca_certs else ssl.CERT_NONE,
        }
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=3,
        **options,  # type: ignore[arg-type]
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
    return RunningServer(server, task, host, actual, "https" if tls is not None else "http")
