"""The app of a pushing sandbox agency: ledger, fault knobs, status pusher and the
``/_sandbox/*`` routes, wired once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from connectors.sandbox_kit.faults import Faults, add_sandbox_routes
from connectors.sandbox_kit.ledger import IdempotencyKeyReused, SandboxLedger, WithdrawalRecord
from connectors.sandbox_kit.push import StatusPusher

log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- app


def quiet_fastapi(**kwargs: Any) -> FastAPI:
    """A sandbox's FastAPI app with FastAPI's OpenTelemetry hooks off, as the hub's: a real
    agency would not trace, and with them on FastAPI asks OpenTelemetry for its providers
    on every request."""
    return FastAPI(
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        **kwargs,
    )


@dataclass
class SandboxApp:
    """A pushing agency's app with its ledger, fault knobs and (journalled) status pusher."""

    app: FastAPI
    ledger: SandboxLedger
    faults: Faults
    pusher: StatusPusher


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


NonEmptySecret = Annotated[SecretStr, AfterValidator(_not_empty)]
"""A sandbox's secret (API key, password, client secret): an empty one is refused."""


def error_response(status_code: int, error: str, **extra: Any) -> JSONResponse:
    """An agency's error answer: ``{"error": <code>, ...}`` (``headers=`` passed through)."""
    headers = extra.pop("headers", None)
    return JSONResponse({"error": error, **extra}, status_code=status_code, headers=headers)


def request_object(raw: bytes) -> dict[str, Any] | JSONResponse:
    """A request body as a JSON object, or the agency's refusal of it (400 not JSON, 422 not
    an object): callers return a JSONResponse as it is."""
    try:
        body = json.loads(raw)
    except ValueError:
        return error_response(400, "invalid_json")
    if not isinstance(body, dict):
        return error_response(422, "validation_failed", errors=[{"field": "", "message": "object"}])
    return body


REASONS = frozenset({"consent_withdrawn", "beneficiary_request", "duplicate", "error"})


def withdrawal_fields(
    body: dict[str, Any], *, key: str, referral: str, programmes: str
) -> dict[str, Any] | JSONResponse:
    """A REST agency's cancellation body, in its own field names (``key``: the idempotency
    key the referral was, or will be, delivered under; ``referral``: the hub's referral id;
    ``programmes``: its own codes), plus ``whole`` and ``reason``; or its 422 naming the
    wrong fields (never their values)."""
    wrong = [
        name
        for name, ok in (
            (key, isinstance(body.get(key), str) and 0 < len(body[key]) <= 255),
            (referral, isinstance(body.get(referral), str) and bool(body[referral])),
            (
                programmes,
                isinstance(body.get(programmes), list)
                and all(isinstance(p, str) for p in body[programmes]),
            ),
            ("whole", isinstance(body.get("whole"), bool)),
            ("reason", body.get("reason") in REASONS),
        )
        if not ok
    ]
    if wrong:
        return error_response(422, "validation_failed", errors=[{"field": f} for f in wrong])
    return {
        "delivery_key": body[key],
        "referral_id": body[referral],
        "programmes": body[programmes],
        "whole": body["whole"],
        "reason": body["reason"],
    }


def announce_withdrawal(
    pusher: StatusPusher,
    ledger: SandboxLedger,
    rec: WithdrawalRecord,
    is_new: bool,
    decision_delay_s: float,
) -> str | None:
    """After a new withdrawal that ends a case the agency has, push ``withdrawn`` once any
    decision still owed is out (so the hub ends on it); returns the case's reference."""
    original = ledger.get(rec.delivery_key)
    reference = original.reference if original is not None else None
    if is_new and rec.whole and original is not None and reference is not None:
        pusher.schedule(original.referral_id, reference, [(decision_delay_s + 0.1, "withdrawn")])
    return reference


@dataclass(frozen=True)
class RecordedWithdrawal:
    record: WithdrawalRecord
    is_new: bool
    reference: str | None
    """The withdrawn case's reference at this agency (None: it has not received it)."""


def record_withdrawal(
    raw: bytes,
    idempotency_key: str,
    ledger: SandboxLedger,
    pusher: StatusPusher,
    decision_delay_s: float,
    *,
    key: str,
    referral: str,
    programmes: str,
) -> RecordedWithdrawal | JSONResponse:
    """What every REST agency's cancellation call does after its own authentication: read
    the body in the agency's field names (``withdrawal_fields``), record it in the ledger
    (idempotent per key; 422 on a reused key) and announce it (``announce_withdrawal``);
    or the error answer to send."""
    body = request_object(raw)
    if isinstance(body, JSONResponse):
        return body
    fields = withdrawal_fields(body, key=key, referral=referral, programmes=programmes)
    if isinstance(fields, JSONResponse):
        return fields
    try:
        rec, is_new = ledger.withdraw(idempotency_key, **fields)
    except IdempotencyKeyReused:
        return error_response(422, "idempotency_key_reused")
    reference = announce_withdrawal(pusher, ledger, rec, is_new, decision_delay_s)
    return RecordedWithdrawal(rec, is_new, reference)


class PushingSandboxConfig(BaseModel):
    """What every single-agency sandbox that pushes statuses is configured with; a family's
    config adds its own fields (an API key, a capacity)."""

    model_config = ConfigDict(extra="forbid")

    agency_id: str
    hub_url: str | None = None
    hub_token: SecretStr | None = None
    decision_delay_s: float = Field(default=2.0, ge=0.0)
    state_file: Path | None = None


def sandbox_app(title: str, config: PushingSandboxConfig) -> SandboxApp:
    """The set-up every pushing REST sandbox shares: the ledger in ``state_file``, the push
    journal next to it, the pusher opened and closed with the app, ``app.state`` exposing
    all three to tests, and the ``/_sandbox/*`` routes."""
    state_file = config.state_file
    hub_token = config.hub_token.get_secret_value() if config.hub_token else None
    ledger = SandboxLedger(state_file)
    faults = Faults()
    pusher = StatusPusher(
        config.agency_id,
        config.hub_url,
        hub_token,
        journal=state_file.with_suffix(".pushes.jsonl") if state_file else None,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pusher.start()
        try:
            yield
        finally:
            await pusher.close()

    app = quiet_fastapi(title=title, lifespan=lifespan)
    app.state.ledger = ledger
    app.state.faults = faults
    app.state.pusher = pusher
    add_sandbox_routes(app, ledger, faults)
    return SandboxApp(app, ledger, faults, pusher)
