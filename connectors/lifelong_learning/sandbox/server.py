"""TLS for a sandbox that asks every client for a certificate and verifies any it is given,
so one port serves the agency API (certificate required) and ``/_sandbox/*`` (none needed).

Measured on uvicorn 0.54 and Python 3.11, and fixed here: uvicorn puts no client
certificate in the ASGI scope (no ``extensions``; only the transport's ``peercert`` has it),
so the verified one is passed on as the ASGI TLS extension; and asyncio closes a refused
handshake without the TLS alert (CPython issue 98078), so a certificate from another CA or
an expired one reached the hub as a bare connection reset, a network fault to it. The alert
is flushed first, as OpenSSL servers do. Both need the TLS layer in our hands: uvicorn
serves plain TCP and each connection gets its own ``SSLProtocol`` around uvicorn's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from asyncio.sslproto import SSLProtocol
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from hub.errors import ConfigurationError
from hub.servers import RunningServer


class _AlertingTLS(SSLProtocol):
    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            self._process_outgoing()  # type: ignore[attr-defined]  # the alert, then the close
        super()._on_handshake_complete(handshake_exc)


class _ClientCertH11(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else []}
        app = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
            await app(scope, receive, send)

        self.app = with_tls


@dataclass
class TlsServer(RunningServer):
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"


async def serve_tls(
    app: ASGIApp, host: str, port: int, name: str, *, cert: Path, key: Path, ca_file: Path
) -> RunningServer:
    """As ``hub.servers.start_server`` (which takes no TLS), with a client certificate
    asked for and verified against ``ca_file`` when given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_OPTIONAL

    def protocol(**uvicorn_arguments: Any) -> asyncio.BaseProtocol:
        http = _ClientCertH11(**uvicorn_arguments)
        loop = asyncio.get_running_loop()
        return _AlertingTLS(loop, http, context, None, server_side=True)  # type: ignore[arg-type]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # see 0004
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"{name}: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    sock.listen(1024)
    options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "on"}
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, **options))  # type: ignore[arg-type]
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"server:{name}")
    while not server.started:
        if task.done():
            task.result()
            raise ConfigurationError(f"{name}: server stopped during start")
        await asyncio.sleep(0.01)
    return TlsServer(server, task, host, sock.getsockname()[1])
