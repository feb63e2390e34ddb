"""The social grocery's case API in its own words: ``refer_household`` to a grocery and
``case_status`` of an earlier referral, behind a static API key (``X-API-Key``).

aiohttp, as for ΔΥΠΑ (docs/decisions/0004-http-client.md). Every aiohttp exception is
translated here into RetryableError or PermanentError; messages name the call and the
HTTP status, never the payload (it carries names and addresses).
"""

from __future__ import annotations

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
class Intake:
    """The grocery's answer to a referral: its case id and whether a place was free."""

    case_id: str
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
    """An HTTP failure as the hub's retry signal; the class name is metric-safe.

    A 401 is retryable: a wrong or revoked API key is the operator's to fix, and the
    referral must wait for that rather than be dead-lettered.
    """
    if status == 401:
        return RetryableError(f"{what}: API key refused", error_class="auth_rejected")
    error_class = f"http_{status}"
    if status in RETRYABLE_STATUSES:
        return RetryableError(
            f"{what}: agency answered {status}",
            error_class=error_class,
            retry_after_s=_retry_after(retry_after),
        )
    return PermanentError(f"{what}: agency answered {status}", error_class=error_class)


class SocialGroceryClient:
    """Calls one grocery's case API; the session (and its connection pool) is the caller's."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout_s: float, session: aiohttp.ClientSession
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"X-API-Key": api_key}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session

    async def refer_household(self, payload: dict[str, Any], idempotency_key: str) -> Intake:
        """Refer a household; a repeat key returns the first case (``duplicate=True``)."""
        status, body = await self._request(
            "POST",
            "/api/referrals",
            "refer_household",
            json=payload,
            headers={**self._headers, "Idempotency-Key": idempotency_key},
        )
        return Intake(*self._case(body, "refer_household"), duplicate=status == 200)

    async def case_status(self, case_id: str) -> str | None:
        """The grocery's current decision on ``case_id``; None if it does not know the case."""
        try:
            _, body = await self._request(
                "GET", f"/api/referrals/{case_id}", "case_status", headers=self._headers
            )
        except PermanentError as exc:
            if exc.error_class == "http_404":
                return None
            raise
        return self._case(body, "case_status")[1]

    @staticmethod
    def _case(body: dict[str, Any], what: str) -> tuple[str, str]:
        case_id, status = body.get("case_id"), body.get("status")
        if not isinstance(case_id, str) or not case_id or not isinstance(status, str):
            raise RetryableError(f"{what}: malformed answer", error_class="malformed_response")
        return case_id, status

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
