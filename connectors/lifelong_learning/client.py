"""The Lifelong Learning Centre's enrolment API in its own words. It knows the hub by its
client certificate alone, so a certificate problem (expired, another CA, a refused handshake,
a 401) is permanent, class ``tls``: only an operator can fix it, then replay the dead letter.
Messages give OpenSSL's reason, never a path or the payload."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import aiohttp

from diasyndesi_sdk.errors import PermanentError, RetryableError
from diasyndesi_sdk.http import read_json_object, request_json


@dataclass(frozen=True)
class Enrolment:
    enrolment_id: str | None
    """None only in the answer to a cancellation of an enrolment the centre has not got."""
    status: str
    duplicate: bool = False


class LifelongLearningClient:
    """Calls one centre; the session (its pool and TLS context) is the caller's."""

    def __init__(self, base_url: str, timeout_s: float, session: aiohttp.ClientSession) -> None:
        self._base = base_url.rstrip("/") + "/v1/enrolments"
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

    async def cancel(
        self,
        enrolment_key: str,
        hub_referral_id: str,
        courses: list[str],
        *,
        whole: bool,
        reason: str,
        idempotency_key: str,
    ) -> Enrolment:
        """Cancel the enrolment requested under ``enrolment_key`` (the ``Idempotency-Key``
        it was, or will be, sent with), whole or some ``courses``. The centre answers 201,
        or 200 with the first answer to a repeated ``idempotency_key`` (``duplicate``); a
        cancellation of an enrolment it does not have yet is kept, and answered without an
        ``enrolment_id``: that enrolment will be born cancelled."""
        body = {
            "enrolment_key": enrolment_key,
            "hub_referral_id": hub_referral_id,
            "courses": courses,
            "whole": whole,
            "reason": reason,
        }
        headers = {"Idempotency-Key": idempotency_key}
        code, answer = await self._call(
            "POST", "/cancellations", "cancel", json=body, headers=headers, known=False
        )
        return Enrolment(answer.enrolment_id, answer.status, duplicate=code == 200)

    async def _call(
        self, method: str, path: str, what: str, *, known: bool = True, **kwargs: Any
    ) -> tuple[int, Enrolment]:
        code, body = await request_json(
            self._session,
            method,
            self._base + path,
            what,  # a certificate problem: permanent ``tls`` (the SDK's table)
            refusal=functools.partial(_certificate_refused, what=what),
            timeout=self._timeout,
            **kwargs,
        )
        enrolment_id, status = body.get("enrolment_id"), body.get("status")
        unknown = enrolment_id is None and not known  # a cancellation that came first
        if not (unknown or (isinstance(enrolment_id, str) and enrolment_id)) or not isinstance(
            status, str
        ):
            raise RetryableError(f"{what}: malformed answer", error_class="malformed_response")
        return code, Enrolment(enrolment_id, status)


async def _certificate_refused(
    response: aiohttp.ClientResponse, what: str
) -> PermanentError | None:
    """A 401 saying the centre saw no valid client certificate is a ``tls`` problem; any
    other refusal is the SDK table's (a plain 401 is refused credentials, retried)."""
    if response.status != 401:
        return None
    body = await read_json_object(response, what)
    if body is None or body.get("error") != "client_certificate_required":
        return None
    return PermanentError(f"{what}: client certificate refused", error_class="tls")
