"""Failure on demand: the knobs a test or an operator sets (``POST /_sandbox/faults`` or
``SANDBOX_*`` variables) and the check that clients honour the Retry-After sent."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from connectors.sandbox_kit.ledger import SandboxLedger

log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- faults

HANG_S = 600.0  # long enough that any sane client times out first
EARLY_TOLERANCE_S = 0.1  # a retry this much before Retry-After ends still counts as on time
MAX_TRACKED_KEYS = 10_000  # Retry-After windows remembered at once (oldest dropped first)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


class FaultKnobs(BaseModel):
    """Failure behaviour of the business endpoints, set by tests and the demo at runtime."""

    model_config = ConfigDict(extra="forbid")

    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(default=0, ge=0)
    status: int = Field(default=503, ge=400, le=599)
    outage_s: float = Field(default=0.0, ge=0.0)
    hang: bool = False
    malformed_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # When > 0, failures injected by `fail_rate` carry `Retry-After: <ceil seconds>` (an
    # outage always carries one), and a repeat of the same key before then is counted.
    retry_after_s: float = Field(default=0.0, ge=0.0)

    @classmethod
    def from_env(cls) -> FaultKnobs:
        """Start-up knobs for `make run`, demos and benchmarks: `SANDBOX_FAIL_RATE`,
        `SANDBOX_LATENCY_MS`, `SANDBOX_STATUS`, `SANDBOX_OUTAGE_S`, `SANDBOX_HANG`,
        `SANDBOX_MALFORMED_RATE`, `SANDBOX_RETRY_AFTER_S` (the same names as the JSON of
        `POST /_sandbox/faults`)."""
        return cls(
            fail_rate=_env_float("SANDBOX_FAIL_RATE", 0.0),
            latency_ms=int(_env_float("SANDBOX_LATENCY_MS", 0.0)),
            status=int(_env_float("SANDBOX_STATUS", 503)),
            outage_s=_env_float("SANDBOX_OUTAGE_S", 0.0),
            hang=os.environ.get("SANDBOX_HANG", "").lower() in {"1", "true", "yes"},
            malformed_rate=_env_float("SANDBOX_MALFORMED_RATE", 0.0),
            retry_after_s=_env_float("SANDBOX_RETRY_AFTER_S", 0.0),
        )


class Faults:
    """Holds the current knobs and the outage window they opened (knobs are replaced whole),
    and checks that clients honour the Retry-After the sandbox sends.

    For every fault answer with Retry-After sent for an idempotency key, the sandbox
    remembers when that key may come back; a repeat of the key earlier than that (less a
    small tolerance) is counted in ``early_retries``. The counters survive knob changes.
    """

    def __init__(self, knobs: FaultKnobs | None = None) -> None:
        self.knobs = FaultKnobs()
        self.outage_until = 0.0
        self.retry_after_sent = 0
        self.early_retries = 0
        self._not_before: dict[str, float] = {}  # key -> monotonic time it may come back
        self.set(knobs if knobs is not None else FaultKnobs.from_env())

    def set(self, knobs: FaultKnobs) -> None:
        self.knobs = knobs
        self.outage_until = time.monotonic() + knobs.outage_s if knobs.outage_s else 0.0

    def outage_remaining_s(self) -> float:
        return max(0.0, self.outage_until - time.monotonic())

    def describe(self) -> dict[str, Any]:
        return {
            **self.knobs.model_dump(),
            "outage_remaining_s": self.outage_remaining_s(),
            "retry_after_sent": self.retry_after_sent,
            "early_retries": self.early_retries,
        }

    def arrived(self, key: str | None) -> bool:
        """Note a request for ``key``; True (and counted) when it came before its
        Retry-After ended. A key that came back in time is forgotten."""
        if key is None:
            return False
        not_before = self._not_before.get(key)
        if not_before is None:
            return False
        if time.monotonic() < not_before - EARLY_TOLERANCE_S:
            self.early_retries += 1
            log.warning("sandbox_early_retry", early_by_s=round(not_before - time.monotonic(), 3))
            return True
        del self._not_before[key]
        return False

    def retry_after(self, key: str | None, seconds: int) -> dict[str, str]:
        """The Retry-After header of a fault answer for ``key``, remembered for `arrived`."""
        self.retry_after_sent += 1
        if key is not None:
            now = time.monotonic()
            self._not_before.pop(key, None)  # re-insert: dict order stays oldest first
            self._not_before[key] = now + seconds
            while len(self._not_before) > MAX_TRACKED_KEYS or (
                self._not_before and next(iter(self._not_before.values())) <= now
            ):
                del self._not_before[next(iter(self._not_before))]
        return {"Retry-After": str(seconds)}


async def apply_faults(faults: Faults, key: str | None = None) -> Response | None:
    """Inject the configured fault; a returned response must be sent instead of real work.

    ``key`` is the request's idempotency key when the agency has one in a header (None
    otherwise): it lets the sandbox count retries that come before the Retry-After it sent.
    """
    faults.arrived(key)
    knobs = faults.knobs
    if knobs.latency_ms:
        await asyncio.sleep(knobs.latency_ms / 1000)
    if knobs.hang:
        await asyncio.sleep(HANG_S)
        return JSONResponse({"error": "timeout"}, status_code=504)
    if faults.outage_remaining_s() > 0:
        seconds = max(1, round(faults.outage_remaining_s()))
        return JSONResponse(
            {"error": "service_unavailable", "detail": "planned outage"},
            status_code=knobs.status,
            headers=faults.retry_after(key, seconds),
        )
    if knobs.fail_rate and random.random() < knobs.fail_rate:
        headers = (
            faults.retry_after(key, math.ceil(knobs.retry_after_s)) if knobs.retry_after_s else None
        )
        return JSONResponse({"error": "injected_fault"}, status_code=knobs.status, headers=headers)
    if knobs.malformed_rate and random.random() < knobs.malformed_rate:
        # What a misconfigured proxy in front of a real agency sends: 200, but not JSON.
        return Response("<html><body>Gateway</body></html>", media_type="text/html")
    return None


# --------------------------------------------------------------------------- routes


def add_sandbox_routes(app: FastAPI, ledger: SandboxLedger, faults: Faults) -> None:
    """Add the `/_sandbox/*` inspection and control routes (never subject to faults)."""

    @app.get("/_sandbox/received", tags=["sandbox"])
    async def sandbox_received() -> list[dict[str, Any]]:
        return ledger.received()

    @app.get("/_sandbox/withdrawals", tags=["sandbox"])
    async def sandbox_withdrawals() -> list[dict[str, Any]]:
        return ledger.withdrawals()

    @app.get("/_sandbox/stats", tags=["sandbox"])
    async def sandbox_stats() -> dict[str, int]:
        return ledger.stats()

    @app.get("/_sandbox/faults", tags=["sandbox"])
    async def sandbox_get_faults() -> dict[str, Any]:
        return faults.describe()

    @app.post("/_sandbox/faults", tags=["sandbox"])
    async def sandbox_set_faults(knobs: FaultKnobs) -> dict[str, Any]:
        faults.set(knobs)
        log.info("sandbox_faults_set", **knobs.model_dump())
        return faults.describe()

    @app.post("/_sandbox/reset", tags=["sandbox"])
    async def sandbox_reset() -> dict[str, int]:
        ledger.reset()
        return ledger.stats()
