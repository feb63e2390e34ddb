"""TLS asking every client for a certificate, verifying any given: one port serves the
agency API (certificate required) and ``/_sandbox/*``. Measured gaps filled: uvicorn 0.54
gives the app no client certificate (it goes in as the ASGI TLS extension), and asyncio
closes a refused handshake without the TLS alert (CPython issue 98078), so the hub saw a
bare reset, a network fault to it; the alert is sent first, as OpenSSL servers do."""

from __future__ import annotations

import asyncio
import functools
import ssl
from asyncio.sslproto import SSLProtocol
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from hub.servers import RunningServer, start_server


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


def _tls_connection(context: ssl.SSLContext, **uvicorn_arguments: Any) -> asyncio.BaseProtocol:
    http = _ClientCertH11(**uvicorn_arguments)
    loop = asyncio.get_running_loop()
    return _AlertingTLS(loop, http, context, None, server_side=True)  # type: ignore[arg-type]


@dataclass
class TlsServer(RunningServer):
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"


async def serve_tls(
    app: ASGIApp, host: str, port: int, name: str, *, cert: Path, key: Path, ca_file: Path
) -> RunningServer:
    """``hub.servers.start_server``, each accepted connection then wrapped in TLS here."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_OPTIONAL  # asked for, verified when given
    plain = await start_server(app, host, port, name)
    # uvicorn builds each connection's protocol from this when the connection comes
    plain.server.config.http_protocol_class = functools.partial(_tls_connection, context)  # type: ignore[assignment]
    return TlsServer(plain.server, plain.task, plain.host, plain.port)
