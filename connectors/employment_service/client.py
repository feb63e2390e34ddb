"""ΔΥΠΑ's registration API in its own words: ``register`` a referred jobseeker and
``registration_status`` of an earlier one, behind OAuth2 client credentials.

aiohttp, not httpx: under 32 concurrent calls on this hardware httpx's AsyncClient fell to
178 req/s while aiohttp reached ~2,600 (docs/decisions/0004-http-client.md).
Every aiohttp exception is translated here into RetryableError or PermanentError.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from hub.errors import PermanentError, RetryableError

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Registration:
    registration_number: str
    status: str
    duplicate: bool


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def classify_status(status: int, retry_after: str | None, what: str) -> Exception:
    """An HTTP failure as the hub's retry signal; the class name is metric-safe."""
    error_class = f"http_{status}"
    if status in RETRYABLE_STATUSES:
        return RetryableError(
            f"{what}: agency answered {status}",
            error_class=error_class,
            retry_after_s=_retry_after(retry_after),
        )
    return PermanentError(f"{what}: agency answered {status}", error_class=error_class)


class EmploymentServiceClient:
    """One OAuth2 token shared by all calls, refreshed before expiry or after a 401."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout_s: float,
        session: aiohttp.ClientSession,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    async def _fetch_token(self) -> str:
        async with self._token_lock:
            if self._token and time.monotonic() < self._token_expires:
                return self._token
            try:
                body = await self._call(
                    "POST",
                    "/oauth/token",
                    "token",
                    data={"grant_type": "client_credentials"},
                    headers={
                        "Authorization": aiohttp.encode_basic_auth(
                            self._client_id, self._client_secret
                        )
                    },
                )
            except PermanentError as exc:
                # Refused credentials are an operator's problem, not the referral's: keep
                # the referral and retry once the credentials are fixed.
                raise RetryableError(
                    "token: client credentials refused", error_class="auth_rejected"
                ) from exc
            token, ttl = body.get("access_token"), body.get("expires_in", 300)
            if not isinstance(token, str) or not isinstance(ttl, int):
                raise RetryableError("token: malformed answer", error_class="malformed_response")
            self._token = token
            self._token_expires = time.monotonic() + max(ttl - 30, 1)
            return token

    async def register(self, payload: dict[str, Any], idempotency_key: str) -> Registration:
        """Register a referred jobseeker; a repeat key returns the first registration."""
        for attempt in (1, 2):
            token = await self._fetch_token()
            try:
                status, body = await self._request(
                    "POST",
                    "/api/v1/registrations",
                    "register",
                    json=payload,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Idempotency-Key": idempotency_key,
                    },
                )
            except PermanentError as exc:
                if exc.error_class != "http_401":
                    raise
                self._token = None  # expired or revoked: fetch a new one, once
                if attempt == 2:
                    raise RetryableError(
                        "register: token refused twice", error_class="auth_rejected"
                    ) from exc
                continue
            number = body.get("registration_number")
            if not isinstance(number, str) or not number:
                raise RetryableError("register: malformed answer", error_class="malformed_response")
            return Registration(number, str(body.get("status", "received")), status == 200)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        _, body = await self._request(method, path, what, **kwargs)
        return body

    async def _request(
        self, method: str, path: str, what: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        try:
            async with self._session.request(
                method, self._base + path, timeout=self._timeout, **kwargs
            ) as response:
                if response.status >= 300:
                    raise classify_status(
                        response.status, response.headers.get("Retry-After"), what
                    )
                raw = bytearray()
                async for chunk in response.content.iter_chunked(16 * 1024):
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise RetryableError(f"{what}: answer too large", error_class="oversized")
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise RetryableError(
                        f"{what}: answer is not JSON", error_class="malformed_response"
                    ) from None
                if not isinstance(body, dict):
                    raise RetryableError(
                        f"{what}: answer is not an object", error_class="malformed_response"
                    )
                return response.status, body
        except TimeoutError as exc:
            raise RetryableError(f"{what}: timed out", error_class="timeout") from exc
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{what}: {type(exc).__name__}", error_class="connection") from exc
