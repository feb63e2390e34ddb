"""Run an ASGI app under uvicorn inside the current event loop, on a given or free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp

from hub.errors import ConfigurationError
from hub.event_loop import http_protocol

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
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=3,
        http=_tls_protocol(tls) if tls is not None else http_protocol(),  # type: ignore[arg-type]
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


# ------------------------------------------------------------------ TLS for sandboxes


def _tls_protocol(tls: ServerTls) -> Callable[..., asyncio.BaseProtocol]:
    """uvicorn's HTTP protocol, each connection wrapped in TLS here rather than by uvicorn,
    for two gaps measured with uvicorn 0.54 (h11) and Python 3.11: uvicorn gives the app no
    client certificate (it goes in as the ASGI TLS extension, ``client_cert_chain``), and
    asyncio closes a refused handshake without the TLS alert (CPython issue 98078), so a
    client saw a bare reset, a network fault to it, instead of "unknown CA" or "expired".
    With ``ca_certs`` a client certificate is asked for and verified when given; the app
    decides which routes need one. Used by the sandboxes of mutual-TLS agencies only."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_certs)
    context.load_cert_chain(tls.certfile, tls.keyfile)
    context.verify_mode = ssl.CERT_OPTIONAL if tls.ca_certs else ssl.CERT_NONE

    class AlertingTLS(SSLProtocol):
        def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
            if handshake_exc is not None:
                self._process_outgoing()  # type: ignore[attr-defined]  # the alert, then close
            super()._on_handshake_complete(handshake_exc)

    class ClientCertH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
            app = self.app

            async def with_tls(scope: Any, receive: Any, send: Any) -> None:
                extensions = {
                    **(scope.get("extensions") or {}),
                    "tls": {"client_cert_chain": chain},
                }
                await app({**scope, "extensions": extensions}, receive, send)

            self.app = with_tls

    def connection(**uvicorn_arguments: Any) -> asyncio.BaseProtocol:
        http = ClientCertH11(**uvicorn_arguments)
        loop = asyncio.get_running_loop()
        return AlertingTLS(loop, http, context, None, server_side=True)  # type: ignore[arg-type]

    return connection
