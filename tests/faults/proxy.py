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
- ``lose_answer``: forward requests, but when an answer starts to come back, discard it
  with probability ``lose_rate`` and reset both sides (RST): the target has done the work,
  the client never hears about it. Decided once per answer (the first bytes back after
  the client last sent something), so each request on a keep-alive connection gets its
  own draw.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
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
    LOSE_ANSWER = "lose_answer"


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
    awaiting_answer: bool = False  # the client sent bytes that have not been answered yet

    def reset(self) -> None:
        rst_close(self.client)
        rst_close(self.upstream)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """``async with FaultProxy(host, port) as proxy:`` then connect to ``proxy.port``.

    ``answers`` counts answers that started to come back, ``answers_lost`` those discarded
    in ``lose_answer`` mode; ``seed`` makes the draws repeatable.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        *,
        seed: int | None = None,
    ):
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.mode = Mode.PASS
        self.latency_ms = 0
        self.lose_rate = 0.0
        self.accepted = 0
        self.answers = 0
        self.answers_lost = 0
        self._random = random.Random(seed)
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
        """Listen (once: ``async with`` on a started proxy keeps its port)."""
        if self._server is None:
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

    def set_mode(self, mode: Mode | str, latency_ms: int = 0, lose_rate: float = 1.0) -> None:
        if not 0.0 <= lose_rate <= 1.0:
            raise ValueError(f"lose_rate must be within [0, 1], not {lose_rate}")
        self.mode = Mode(mode)
        self.latency_ms = latency_ms
        self.lose_rate = lose_rate if self.mode is Mode.LOSE_ANSWER else 0.0
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

    def lose_answers(self, rate: float = 1.0) -> None:
        self.set_mode(Mode.LOSE_ANSWER, lose_rate=rate)

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
        forward = asyncio.create_task(self._pump(reader, up_writer, conn, answers=False))
        backward = asyncio.create_task(self._pump(up_reader, conn.client, conn, answers=True))
        conn.tasks.update((forward, backward))
        await asyncio.gather(forward, backward, return_exceptions=True)

    def _lose(self, conn: _Connection) -> bool:
        """At the first bytes of an answer: count it, and draw whether it is lost."""
        if not conn.awaiting_answer:
            return False  # the rest of an answer already let through
        conn.awaiting_answer = False
        self.answers += 1
        if self.mode is Mode.LOSE_ANSWER and self._random.random() < self.lose_rate:
            self.answers_lost += 1
            return True
        return False

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: _Connection,
        *,
        answers: bool,
    ) -> None:
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
                if not answers:
                    conn.awaiting_answer = True  # before the write: the answer may be quick
                elif self._lose(conn):
                    conn.reset()
                    return
                if mode is Mode.LATENCY and latency_ms:
                    await asyncio.sleep(latency_ms / 1000)
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError):
            return
