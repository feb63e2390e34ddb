"""A small asyncio TCP fault proxy on loopback, for fault-injection tests.

It listens on a free port and forwards to a target. The mode can be switched at runtime
and applies to new and existing connections:

- ``pass``: forward bytes both ways.
- ``latency``: forward, but hold every chunk ``latency_ms`` before writing it on.
- ``reset``: abort every open connection with a TCP RST (SO_LINGER 0) and reset every new
  one right after accepting it.
- ``blackhole``: accept and read, never forward and never answer (bytes are discarded;
  a connection accepted in this mode never gets an upstream, even after a mode change).
- ``hang``: accept, but stop reading; nothing is forwarded or answered until the mode
  changes, and then the held bytes flow on (nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

CHUNK = 64 * 1024


class Mode(StrEnum):
    PASS = "pass"
    LATENCY = "latency"
    RESET = "reset"
    BLACKHOLE = "blackhole"
    HANG = "hang"


def rst_close(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection with a TCP RST rather than a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def reset(self) -> None:
        rst_close(self.client)
        rst_close(self.upstream)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """``async with FaultProxy(host, port) as proxy:`` then connect to ``proxy.port``."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.mode = Mode.PASS
        self.latency_ms = 0
        self.accepted = 0
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.reset()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- switching ------------------------------------------------------------------------

    def set_mode(self, mode: Mode | str, latency_ms: int = 0) -> None:
        self.mode = Mode(mode)
        self.latency_ms = latency_ms
        if self.mode is Mode.RESET:
            for conn in list(self._connections):
                conn.reset()
        self._changed.set()
        self._changed = asyncio.Event()

    def pass_through(self) -> None:
        self.set_mode(Mode.PASS)

    def latency(self, ms: int) -> None:
        self.set_mode(Mode.LATENCY, ms)

    def reset(self) -> None:
        self.set_mode(Mode.RESET)

    def blackhole(self) -> None:
        self.set_mode(Mode.BLACKHOLE)

    def hang(self) -> None:
        self.set_mode(Mode.HANG)

    async def _while_hanging(self) -> None:
        while self.mode is Mode.HANG:
            await self._changed.wait()

    # -- data path ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        conn = _Connection(client=writer)
        self._connections.add(conn)
        try:
            await self._serve(conn, reader)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(conn)
            self._handlers.discard(task)
            if not writer.transport.is_closing():
                writer.close()
            if conn.upstream is not None and not conn.upstream.transport.is_closing():
                conn.upstream.close()

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        await self._while_hanging()
        if self.mode is Mode.RESET:
            conn.reset()
            return
        if self.mode is Mode.BLACKHOLE:
            while await reader.read(CHUNK):
                pass
            return
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        conn.upstream = up_writer
        if self.mode is Mode.RESET:  # switched while connecting
            conn.reset()
            return
        forward = asyncio.create_task(self._pump(reader, up_writer))
        backward = asyncio.create_task(self._pump(up_reader, conn.client))
        conn.tasks.update((forward, backward))
        await asyncio.gather(forward, backward, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._while_hanging()
                data = await reader.read(CHUNK)
                if not data:
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                    return
                await self._while_hanging()
                mode, latency_ms = self.mode, self.latency_ms
                if mode is Mode.RESET:
                    return
                if mode is Mode.BLACKHOLE:
                    continue
                if mode is Mode.LATENCY and latency_ms:
                    await asyncio.sleep(latency_ms / 1000)
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError):
            return
