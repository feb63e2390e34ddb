"""The Lifelong Learning Centre's enrolment API in its own words. It knows the hub by its
client certificate alone, so a certificate problem (expired, another CA, a refused handshake,
a 401) is permanent, class ``tls``: only an operator can fix it, then replay the dead letter.
Messages give OpenSSL's reason, never a path or the payload."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from connectors.http import http_failure, not_an_object, read_json_object, transport_errors
from hub.errors import PermanentError, RetryableError

# A TLS connection cut short is the network's doing, not the certificate's.
CUT_SHORT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


@dataclass(frozen=True)
class Enrolment:
    enrolment_id: str
    status: str
    duplicate: bool = False


@asynccontextmanager
async def tls_errors(what: str) -> AsyncIterator[None]:
    """Certificate problems as ``tls``: the ssl module's error behind aiohttp's (some of which
    subclass it), unless the connection was only cut short; a bare ssl error as ``connection``."""
    try:
        yield
    except (aiohttp.ClientError, ssl.SSLError) as exc:
        cause: BaseException | None = exc
        while isinstance(cause, aiohttp.ClientError) or not isinstance(cause, ssl.SSLError | None):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, CUT_SHORT):
            reason = getattr(cause, "reason", None) or type(cause).__name__
            raise PermanentError(f"{what}: TLS refused ({reason})", error_class="tls") from exc
        if isinstance(exc, ssl.SSLError):
            raise RetryableError(f"{what}: {type(exc).__name__}", error_class="connection") from exc
        raise


class LifelongLearningClient:
    """Calls one centre; the session (and its pool) is the caller's."""

    def __init__(
        self, base_url: str, tls: ssl.SSLContext, timeout_s: float, session: aiohttp.ClientSession
    ) -> None:
        self._base = base_url.rstrip("/") + "/v1/enrolments"
        self._tls = tls
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session

    async def enrol(self, payload: dict[str, Any], idempotency_key: str) -> Enrolment:
        """A repeat key answers 200 with the first enrolment (``duplicate=True``)."""
        headers = {"Idempotency-Key": idempotency_key}
        code, answer = await self._call("POST", "", "enrol", json=payload, headers=headers)
        return Enrolment(answer.enrolment_id, answer.status, duplicate=code == 200)

    async def enrolment_status(self, enrolment_id: str) -> Enrolment | None:
        """None if the centre does not know ``enrolment_id``."""
        try:
            return (await self._call("GET", f"/{enrolment_id}", "enrolment_status"))[1]
        except PermanentError as exc:
            if exc.error_class == "http_404":
                return None
            raise

    async def cancel(self, enrolment_id: str) -> Enrolment:
        """Withdraw an enrolment; cancelling twice answers the same."""
        return (await self._call("POST", f"/{enrolment_id}/cancel", "cancel"))[1]

    async def _call(
        self, method: str, path: str, what: str, **kwargs: Any
    ) -> tuple[int, Enrolment]:
        async with (
            transport_errors(what),
            tls_errors(what),
            self._session.request(
                method, self._base + path, ssl=self._tls, timeout=self._timeout, **kwargs
            ) as response,
        ):
            if response.status == 401:  # the one way it authenticates anyone
                raise PermanentError(f"{what}: client certificate refused", error_class="tls")
            if response.status >= 300:
                raise http_failure(response.status, response.headers.get("Retry-After"), what)
            if (body := await read_json_object(response, what)) is None:
                raise not_an_object(what)
        enrolment_id, status = body.get("enrolment_id"), body.get("status")
        if not isinstance(enrolment_id, str) or not enrolment_id or not isinstance(status, str):
            raise RetryableError(f"{what}: malformed answer", error_class="malformed_response")
        return response.status, Enrolment(enrolment_id, status)
