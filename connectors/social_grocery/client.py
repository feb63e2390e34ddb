"""The social grocery's case API in its own words: ``refer_household`` to a grocery,
``case_status`` of an earlier referral and ``cancel_case``, behind a static API key
(``X-API-Key``).

aiohttp, as for ΔΥΠΑ (docs/decisions/0004-http-client.md). Every failure is translated
through the SDK's one table (a refused API key, 401, is retryable ``auth_rejected``: the
operator must fix the key and the referral waits); messages name the call and the
HTTP status, never the payload (it carries names and addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from diasyndesi_sdk.errors import PermanentError, RetryableError
from diasyndesi_sdk.http import request_json


@dataclass(frozen=True)
class Intake:
    """The grocery's answer to a referral: its case id and whether a place was free."""

    case_id: str | None
    """None only in the answer to a cancellation of a case the grocery has not got yet."""
    status: str
    duplicate: bool


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

    async def cancel_case(
        self,
        external_key: str,
        external_id: str,
        services: list[str],
        *,
        whole: bool,
        reason: str,
        idempotency_key: str,
    ) -> Intake:
        """Cancel the case referred under ``external_key`` (the ``Idempotency-Key`` it was,
        or will be, sent with), whole or some services; a repeated
        ``idempotency_key`` answers the first answer. A cancellation of a case the grocery
        has not got yet is kept (no ``case_id`` in the answer): that case is born cancelled."""
        status, body = await self._request(
            "POST",
            "/api/referrals/cancellations",
            "cancel_case",
            json={
                "external_key": external_key,
                "external_id": external_id,
                "services": services,
                "whole": whole,
                "reason": reason,
            },
            headers={**self._headers, "Idempotency-Key": idempotency_key},
        )
        case_id, state = body.get("case_id"), body.get("status")
        if not (case_id is None or (isinstance(case_id, str) and case_id)) or not isinstance(
            state, str
        ):
            raise RetryableError("cancel_case: malformed answer", error_class="malformed_response")
        return Intake(case_id, state, duplicate=status == 200)

    @staticmethod
    def _case(body: dict[str, Any], what: str) -> tuple[str, str]:
        case_id, status = body.get("case_id"), body.get("status")
        if not isinstance(case_id, str) or not case_id or not isinstance(status, str):
            raise RetryableError(f"{what}: malformed answer", error_class="malformed_response")
        return case_id, status

    async def _request(
        self, method: str, path: str, what: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        return await request_json(
            self._session, method, self._base + path, what, timeout=self._timeout, **kwargs
        )
