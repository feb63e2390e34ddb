"""What every REST connector needs from HTTP, written once: the retry signal an HTTP status
gives, ``Retry-After`` in either form, a capped JSON read, and the translation of aiohttp's
transport errors. Each agency client keeps only what is its own (auth, vocabulary, the
meaning it gives 401 or 409).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from connectors.base import KEEPALIVE_S
from hub.errors import DeliveryError, PermanentError, RetryableError


def http_session(max_connections: int) -> aiohttp.ClientSession:
    """The one way a connector opens its pool: bounded, and dropping idle connections before
    common server keep-alives end (``KEEPALIVE_S``)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=KEEPALIVE_S),
        raise_for_status=False,
    )


RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 64 * 1024


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def http_failure(status: int, retry_after_header: str | None, what: str) -> DeliveryError:
    """A failed HTTP status as the hub's retry signal; the class name is metric-safe."""
    message = f"{what}: agency answered {status}"
    if status in RETRYABLE_STATUSES:
        return RetryableError(
            message, error_class=f"http_{status}", retry_after_s=retry_after(retry_after_header)
        )
    return PermanentError(message, error_class=f"http_{status}")


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
    """Timeouts and connection failures become RetryableError; nothing from aiohttp escapes."""
    try:
        yield
    except TimeoutError as exc:
        raise RetryableError(f"{what}: timed out", error_class="timeout") from exc
    except aiohttp.ClientError as exc:
        raise RetryableError(f"{what}: {type(exc).__name__}", error_class="connection") from exc
