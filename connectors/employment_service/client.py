"""ΔΥΠΑ's registration API in its own words: ``register`` a referred jobseeker and
``withdraw_registration``, behind OAuth2 client credentials (ΔΥΠΑ pushes statuses; there is
no status read yet).

aiohttp, not httpx: under 32 concurrent calls on this hardware httpx's AsyncClient fell to
178 req/s while aiohttp reached ~2,600 (docs/decisions/0004-http-client.md).
Every failure is translated through the SDK (``request_json``, the one classification table).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from diasyndesi_sdk.classify import credentials_refused
from diasyndesi_sdk.errors import PermanentError, RetryableError
from diasyndesi_sdk.http import request_json


@dataclass(frozen=True)
class Registration:
    registration_number: str | None
    """None only in the answer to a withdrawal of a registration ΔΥΠΑ has not got yet."""
    status: str
    duplicate: bool


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
                # An OAuth2 token endpoint refuses a client with 400 invalid_client as often
                # as with 401: either way the operator's to fix, so the referral waits.
                raise credentials_refused("token", "client credentials") from exc
            token, ttl = body.get("access_token"), body.get("expires_in", 300)
            if not isinstance(token, str) or not isinstance(ttl, int):
                raise RetryableError("token: malformed answer", error_class="malformed_response")
            self._token = token
            self._token_expires = time.monotonic() + max(ttl - 30, 1)
            return token

    async def register(self, payload: dict[str, Any], idempotency_key: str) -> Registration:
        """Register a referred jobseeker; a repeat key returns the first registration."""
        status, body = await self._authorised(
            "POST", "/api/v1/registrations", "register", payload, idempotency_key
        )
        number = body.get("registration_number")
        if not isinstance(number, str) or not number:
            raise RetryableError("register: malformed answer", error_class="malformed_response")
        return Registration(number, str(body.get("status", "received")), status == 200)

    async def withdraw_registration(
        self,
        registration_key: str,
        hub_referral_id: str,
        programmes: list[str],
        *,
        whole: bool,
        reason: str,
        idempotency_key: str,
    ) -> Registration:
        """Withdraw the registration requested under ``registration_key`` (the
        ``Idempotency-Key`` it was, or will be, sent with), whole or some programmes; a
        repeated ``idempotency_key`` answers the first answer (``duplicate``). ΔΥΠΑ keeps a
        withdrawal of a registration it has not got yet (no number in the answer): that
        registration is born withdrawn."""
        body = {
            "registration_key": registration_key,
            "hub_referral_id": hub_referral_id,
            "programmes": programmes,
            "whole": whole,
            "reason": reason,
        }
        status, answer = await self._authorised(
            "POST", "/api/v1/registrations/withdrawals", "withdraw", body, idempotency_key
        )
        number, state = answer.get("registration_number"), answer.get("status")
        if not (number is None or (isinstance(number, str) and number)) or not isinstance(
            state, str
        ):
            raise RetryableError("withdraw: malformed answer", error_class="malformed_response")
        return Registration(number, state, status == 200)

    async def _authorised(
        self, method: str, path: str, what: str, payload: dict[str, Any], idempotency_key: str
    ) -> tuple[int, dict[str, Any]]:
        """One call with the bearer token; a refused token is fetched again, once."""
        for attempt in (1, 2):
            token = await self._fetch_token()
            try:
                return await self._request(
                    method,
                    path,
                    what,
                    json=payload,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Idempotency-Key": idempotency_key,
                    },
                )
            except RetryableError as exc:
                if exc.error_class != "auth_rejected":
                    raise
                self._token = None  # expired or revoked: fetch a new one, once
                if attempt == 2:
                    raise RetryableError(
                        f"{what}: token refused twice", error_class="auth_rejected"
                    ) from exc
        raise AssertionError("unreachable: the loop returns or raises")

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        _, body = await self._request(method, path, what, **kwargs)
        return body

    async def _request(
        self, method: str, path: str, what: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        return await request_json(
            self._session, method, self._base + path, what, timeout=self._timeout, **kwargs
        )
