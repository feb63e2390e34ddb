"""The fault proxy itself, against a tiny echo server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import FaultProxy, Mode

TIMEOUT_S = 2.0


class Echo:
    def __init__(self) -> None:
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                self.received.extend(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    yield server
    server.server.close()
    await server.server.wait_closed()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT_S)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def test_pass_forwards_both_ways(proxy: FaultProxy, echo: Echo) -> None:
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"hello") == b"hello"
    assert await roundtrip(reader, writer, b"x" * 200_000) == b"x" * 200_000
    assert bytes(echo.received[:5]) == b"hello"
    await close(writer)


async def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"warm") == b"warm"
    proxy.latency(150)
    started = time.perf_counter()
    assert await roundtrip(reader, writer, b"slow") == b"slow"
    assert time.perf_counter() - started >= 0.29  # 150 ms out + 150 ms back
    proxy.pass_through()
    started = time.perf_counter()
    assert await roundtrip(reader, writer, b"fast") == b"fast"
    assert time.perf_counter() - started < 0.15
    await close(writer)


async def test_reset_aborts_existing_and_new_connections_with_rst(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"before") == b"before"
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), TIMEOUT_S)
    await close(writer)

    reader, writer = await connect(proxy)  # the kernel accepts, the proxy resets
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), TIMEOUT_S)
    await close(writer)

    proxy.pass_through()
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"after") == b"after"
    await close(writer)


async def test_blackhole_reads_but_never_forwards_or_answers(proxy: FaultProxy, echo: Echo) -> None:
    proxy.blackhole()
    reader, writer = await connect(proxy)
    writer.write(b"into the void")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(10), 0.5)
    assert echo.received == b""
    await close(writer)

    # an open connection switched to blackhole swallows bytes too
    proxy.pass_through()
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"ok") == b"ok"
    proxy.blackhole()
    writer.write(b"lost")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(10), 0.5)
    assert bytes(echo.received) == b"ok"
    await close(writer)


async def test_hang_holds_bytes_until_the_mode_changes(proxy: FaultProxy, echo: Echo) -> None:
    proxy.hang()
    reader, writer = await connect(proxy)
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(10), 0.5)
    assert echo.received == b""
    proxy.pass_through()
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT_S) == b"held"
    await close(writer)


async def test_mode_is_validated_and_stop_closes_everything(echo: Echo) -> None:
    proxy = await FaultProxy("127.0.0.1", echo.port).start()
    with pytest.raises(ValueError, match="'sideways' is not a valid Mode"):
        proxy.set_mode("sideways")
    proxy.set_mode(Mode.PASS)
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"x") == b"x"
    assert proxy.open_connections == 1
    await proxy.stop()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), TIMEOUT_S)
    await close(writer)


async def test_lose_answer_forwards_the_request_but_resets_instead_of_answering(
    proxy: FaultProxy, echo: Echo
) -> None:
    proxy.lose_answers(1.0)
    reader, writer = await connect(proxy)
    writer.write(b"do it")
    await writer.drain()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), TIMEOUT_S)
    assert bytes(echo.received) == b"do it"  # the target did the work
    assert (proxy.answers, proxy.answers_lost) == (1, 1)
    await close(writer)


async def test_lose_answer_draws_once_per_answer_on_a_kept_alive_connection(
    proxy: FaultProxy, echo: Echo
) -> None:
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"one") == b"one"
    assert await roundtrip(reader, writer, b"two") == b"two"
    proxy.lose_answers(1.0)  # applies to the open connection too
    writer.write(b"three")
    await writer.drain()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.readexactly(5), TIMEOUT_S)
    assert bytes(echo.received) == b"onetwothree"
    assert (proxy.answers, proxy.answers_lost) == (3, 1)
    await close(writer)


async def test_lose_answer_at_a_rate_loses_some_and_passes_the_rest(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port, seed=7) as proxy:
        proxy.lose_answers(0.5)
        passed = lost = 0
        for n in range(40):
            reader, writer = await connect(proxy)
            try:
                assert await roundtrip(reader, writer, b"%02d" % n) == b"%02d" % n
                passed += 1
            except (ConnectionResetError, asyncio.IncompleteReadError):
                lost += 1
            await close(writer)
        assert len(echo.received) == 80  # every request reached the target
        assert (proxy.answers, proxy.answers_lost) == (40, lost)
        assert 8 <= lost <= 32 and passed == 40 - lost
        proxy.lose_answers(0.0)
        reader, writer = await connect(proxy)
        assert await roundtrip(reader, writer, b"ok") == b"ok"
        await close(writer)
    with pytest.raises(ValueError, match="lose_rate"):
        proxy.lose_answers(1.5)


async def test_starting_twice_keeps_one_listener(echo: Echo) -> None:
    proxy = await FaultProxy("127.0.0.1", echo.port).start()
    port = proxy.port
    async with proxy:
        assert proxy.port == port
        reader, writer = await connect(proxy)
        assert await roundtrip(reader, writer, b"x") == b"x"
        await close(writer)
