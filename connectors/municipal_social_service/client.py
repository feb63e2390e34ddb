"""A municipal social service's case API in its own words: ``open_case`` for a referred
citizen and the ``referral.withdrawn`` webhook (``referral_withdrawn``), every request signed
per Standard Webhooks with the municipality's secret.

The ``webhook-id`` of a request is the delivery's idempotency key, so a retry carries the
same id and the municipality absorbs it; the timestamp (and so the signature) is fresh on
every attempt, or a retry after five minutes would be refused as stale. aiohttp, as for
every agency (docs/decisions/0004-http-client.md); its exceptions are translated here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from diasyndesi_sdk.classify import credentials_refused
from diasyndesi_sdk.errors import DeliveryError, PermanentError, RetryableError
from diasyndesi_sdk.http import http_failure, read_json_object, request_json
from diasyndesi_sdk.webhooks import REASONS, sign


@dataclass(frozen=True)
class Case:
    """The municipality's answer: its case number, the case status, whether it was a repeat."""

    case_number: str | None
    """None only in the answer to a withdrawal of a case the municipality has not got yet."""
    status: str
    duplicate: bool


def classify(
    status: int, headers: Mapping[str, str], body: dict[str, Any], what: str
) -> DeliveryError:
    """An HTTP failure as the hub's retry signal; every class name is metric-safe.

    401 is a refused signature (wrong secret, or a clock off by over five minutes): the
    operator must fix it, the referral must wait. 409 is an id reused with a different
    body, which only a bug or a mapping changed mid-retry can cause: resending cannot help.
    """
    if status == 401:
        reason = body.get("reason")
        return credentials_refused(what, f"signature: {reason}" if reason in REASONS else "")
    if status == 409:
        return PermanentError(
            f"{what}: message id reused with a different body", error_class="http_409"
        )
    return http_failure(status, headers.get("Retry-After"), what)


class MunicipalSocialServiceClient:
    """Signs and sends case requests to one municipality (``base_url`` ends with its id)."""

    def __init__(
        self, base_url: str, secret: str, *, timeout_s: float, session: aiohttp.ClientSession
    ) -> None:
        self._base = base_url.rstrip("/")
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session

    async def open_case(self, payload: dict[str, Any], idempotency_key: str) -> Case:
        """Open a case for a referred citizen; a repeated key returns the first case."""
        status, body = await self._send(
            "POST", "/api/v1/referrals", "open_case", payload, idempotency_key
        )
        number = body.get("case_number")
        if not isinstance(number, str) or not number:
            raise RetryableError("open_case: malformed answer", error_class="malformed_response")
        return Case(number, str(body.get("status", "received")), status == 200)

    async def referral_withdrawn(
        self,
        case_key: str,
        hub_referral_id: str,
        services: list[str],
        *,
        whole: bool,
        reason: str,
        withdrawn_at: str,
        message_id: str,
    ) -> Case:
        """The ``referral.withdrawn`` webhook (``POST /api/v1/webhooks``, a Standard Webhooks
        payload ``{"type", "timestamp", "data"}``) for the case opened, or to be opened,
        under ``case_key``: whole (the case is closed) or some services. ``message_id`` is
        its ``webhook-id``: a retry carries the same body and id, and the municipality
        answers the first answer; one for a case it has not got yet is kept (no
        ``case_number``), and that case is born closed."""
        payload = {
            "type": "referral.withdrawn",
            "timestamp": withdrawn_at,
            "data": {
                "case_key": case_key,
                "hub_referral_id": hub_referral_id,
                "services": services,
                "whole": whole,
                "reason": reason,
            },
        }
        what = "referral_withdrawn"
        status, body = await self._send("POST", "/api/v1/webhooks", what, payload, message_id)
        number, state = body.get("case_number"), body.get("status")
        if not (number is None or (isinstance(number, str) and number)) or not isinstance(
            state, str
        ):
            raise RetryableError(f"{what}: malformed answer", error_class="malformed_response")
        return Case(number, state, status == 200)

    async def _send(
        self, method: str, path: str, what: str, payload: dict[str, Any], msg_id: str
    ) -> tuple[int, dict[str, Any]]:
        raw = orjson.dumps(payload)
        headers = {
            **sign(self._secret, msg_id, time.time(), raw),
            "Content-Type": "application/json",
            "Idempotency-Key": msg_id,
        }

        async def refusal(response: aiohttp.ClientResponse) -> DeliveryError | None:
            # Only a 401 says something we use (the reason); other bodies stay unread.
            detail = await read_json_object(response, what) if response.status == 401 else None
            return classify(response.status, response.headers, detail or {}, what)

        return await request_json(
            self._session,
            method,
            self._base + path,
            what,
            refusal=refusal,
            data=raw,
            headers=headers,
            timeout=self._timeout,
        )
