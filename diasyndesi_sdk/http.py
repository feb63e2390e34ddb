"""What every REST connector needs from HTTP, written once: the pool, a capped JSON read, and
the translation of aiohttp's failures through the one table (``diasyndesi_sdk.classify``).
Each agency client keeps only what is its own (auth, vocabulary, a meaning it gives 409).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from diasyndesi_sdk.classify import http_failure, retry_after, transport_failure
from diasyndesi_sdk.connector import KEEPALIVE_S
from diasyndesi_sdk.errors import DeliveryError, RetryableError

__all__ = [
    "MAX_RESPONSE_BYTES",
    "http_failure",
    "http_session",
    "not_an_object",
    "read_json_object",
    "request_json",
    "retry_after",
    "transport_errors",
]

MAX_RESPONSE_BYTES = 64 * 1024


def http_session(
    max_connections: int, *, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """The one way a connector opens its pool: bounded, dropping idle connections before
    common server keep-alives end (``KEEPALIVE_S``), with the family's TLS context (a client
    certificate for mutual TLS; ``diasyndesi_sdk.tls``) when it has one."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=max_connections,
            keepalive_timeout=KEEPALIVE_S,
            ssl=ssl_context if ssl_context is not None else True,
        ),
        raise_for_status=False,
    )


async def read_json_object(response: aiohttp.ClientResponse, what: str) -> dict[str, Any] | None:
    """The answer as a JSON object, or None if it is not one; read in chunks and capped, so a
    hostile or broken agency cannot make the hub buffer an endless body."""
    raw = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        raw += chunk
        if len(raw) > MAX_RESPONSE_BYTES:
            raise RetryableError(f"{what}: answer too large", error_class="oversized")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def not_an_object(what: str) -> RetryableError:
    return RetryableError(f"{what}: answer is not a JSON object", error_class="malformed_response")


@asynccontextmanager
async def transport_errors(what: str) -> AsyncIterator[None]:
    """Timeouts, connection and TLS failures become delivery errors (``classify``);
    nothing from aiohttp or ssl escapes."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError, ssl.SSLError) as exc:
        raise transport_failure(exc, what) from exc


Refusal = Callable[[aiohttp.ClientResponse], Awaitable[DeliveryError | None]]
"""A family's own reading of a failed answer (a 409 "id reused", a 401 that names the
certificate); None leaves it to the table."""


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    what: str,
    *,
    refusal: Refusal | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, Any]]:
    """One call whose answer is a JSON object, every failure translated: transport and TLS
    errors, a status of 300 or more (the family's ``refusal`` first, then the table), an
    answer that is not an object. Returns the status and the object."""
    async with transport_errors(what), session.request(method, url, **kwargs) as response:
        if response.status >= 300:
            if refusal is not None and (error := await refusal(response)) is not None:
                raise error
            raise http_failure(response.status, response.headers.get("Retry-After"), what)
        body = await read_json_object(response, what)
        if body is None:
            raise not_an_object(what)
        return response.status, body
