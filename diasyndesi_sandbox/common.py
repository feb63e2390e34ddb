"""Pieces shared by every sandbox agency: a ledger, fault knobs and a status pusher.

The sandboxes stand in for real agencies in tests, the demo and benchmarks, so each must
behave like one: remember what it received (also across restarts), enforce its own
idempotency, fail on demand and report status changes back to the hub. Keeping those
behaviours here means the four agency simulators only differ where the agencies do.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from diasyndesi_sdk.classify import retry_after

log = structlog.get_logger(__name__)

__all__ = [
    "FaultKnobs",
    "Faults",
    "IdempotencyKeyReused",
    "PushJournal",
    "ReceivedRecord",
    "SandboxApp",
    "SandboxLedger",
    "StatusPusher",
    "add_sandbox_routes",
    "apply_faults",
    "sandbox_app",
    "utc_now",
]


def utc_now() -> datetime:
    """Timezone-aware now; the hub's contract requires offsets on every timestamp."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- ledger


class IdempotencyKeyReused(Exception):
    """A known idempotency key arrived with a different body (Stripe answers 422 to this)."""

    def __init__(self, idempotency_key: str) -> None:
        super().__init__("idempotency key reused with a different body")
        self.idempotency_key = idempotency_key


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """One call as the agency saw it; `reference` is the agency's own number for it."""

    idempotency_key: str
    referral_id: str
    payload: dict[str, Any]
    received_at: datetime
    duplicate: bool
    reference: str | None = None

    def public(self) -> dict[str, Any]:
        """The shape promised by `GET /_sandbox/received` (the README's sandbox contract)."""
        return {
            "idempotency_key": self.idempotency_key,
            "referral_id": self.referral_id,
            "payload": self.payload,
            "received_at": self.received_at.isoformat(),
            "duplicate": self.duplicate,
        }

    def to_json_line(self) -> str:
        return json.dumps({**self.public(), "reference": self.reference}, ensure_ascii=False)

    @classmethod
    def from_json_line(cls, line: str) -> ReceivedRecord:
        raw = json.loads(line)
        return cls(
            idempotency_key=str(raw["idempotency_key"]),
            referral_id=str(raw["referral_id"]),
            payload=dict(raw["payload"]),
            received_at=datetime.fromisoformat(raw["received_at"]),
            duplicate=bool(raw["duplicate"]),
            reference=raw.get("reference"),
        )


class SandboxLedger:
    """What the agency received, with idempotency enforced per key.

    Every call to `record` is appended to the received list (repeats flagged
    `duplicate=True`), so tests can count duplicates the hub caused. Operations are
    synchronous and guarded by a lock, so they are atomic on one event loop and safe
    even from threads. With `state_file`, each entry is appended as a JSON line and
    replayed on construction: a restarted agency still knows the keys it accepted.
    """

    def __init__(self, state_file: Path | None = None) -> None:
        self._state_file = state_file
        self._lock = threading.Lock()
        self._entries: list[ReceivedRecord] = []
        self._by_key: dict[str, ReceivedRecord] = {}
        self._by_reference: dict[str, ReceivedRecord] = {}
        if state_file is not None and state_file.exists():
            self._load(state_file)

    def _load(self, state_file: Path) -> None:
        skipped = 0
        with state_file.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    self._remember(ReceivedRecord.from_json_line(line))
                except (ValueError, KeyError, TypeError):
                    skipped += 1  # a torn last line after a crash; the rest is still good
        log.info("sandbox_ledger_loaded", entries=len(self._entries), skipped=skipped)

    def _remember(self, rec: ReceivedRecord) -> None:
        self._entries.append(rec)
        if not rec.duplicate:
            self._by_key[rec.idempotency_key] = rec
            if rec.reference is not None:
                self._by_reference[rec.reference] = rec

    def _persist(self, rec: ReceivedRecord) -> None:
        if self._state_file is None:
            return
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        with self._state_file.open("a", encoding="utf-8") as fh:
            fh.write(rec.to_json_line() + "\n")

    def record(
        self,
        idempotency_key: str,
        referral_id: str,
        payload: dict[str, Any],
        make_reference: Callable[[int], str] | None = None,
    ) -> tuple[ReceivedRecord, bool]:
        """Record one call; return the original record and whether this call was new.

        `make_reference(n)` builds the agency's number for the n-th accepted call (1-based)
        and is only called for new keys. Raises `IdempotencyKeyReused` (recording nothing)
        when a known key comes with a different payload.
        """
        with self._lock:
            original = self._by_key.get(idempotency_key)
            if original is not None:
                if original.payload != payload:
                    raise IdempotencyKeyReused(idempotency_key)
                dup = ReceivedRecord(
                    idempotency_key, original.referral_id, payload, utc_now(), True, None
                )
                self._persist(dup)
                self._remember(dup)
                return original, False
            reference = make_reference(len(self._by_key) + 1) if make_reference else None
            rec = ReceivedRecord(idempotency_key, referral_id, payload, utc_now(), False, reference)
            self._persist(rec)
            self._remember(rec)
            return rec, True

    def get(self, idempotency_key: str) -> ReceivedRecord | None:
        return self._by_key.get(idempotency_key)

    def by_reference(self, reference: str) -> ReceivedRecord | None:
        return self._by_reference.get(reference)

    def accepted(self) -> Iterable[ReceivedRecord]:
        return list(self._by_key.values())

    def received(self) -> list[dict[str, Any]]:
        return [rec.public() for rec in self._entries]

    def stats(self) -> dict[str, int]:
        accepted = len(self._by_key)
        return {
            "received": len(self._entries),
            "accepted": accepted,
            "duplicates": len(self._entries) - accepted,
        }

    def reset(self) -> None:
        """Forget everything, on disk too (tests only)."""
        with self._lock:
            self._entries.clear()
            self._by_key.clear()
            self._by_reference.clear()
            if self._state_file is not None and self._state_file.exists():
                self._state_file.write_text("", encoding="utf-8")


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


# --------------------------------------------------------------------------- status push


class PushJournal:
    """The agency's outgoing status changes, kept on disk until the hub has taken each one.

    A real agency queues its webhooks durably; without this a sandbox killed together with
    the hub (``kill -9`` of the ``make run`` tree) forgot the answers it still owed, and the
    fault suite could not tell an answer lost by the hub from one lost by the sandbox.
    JSON lines: ``{"op": "add", "id", "referral_id", "reference", "steps": [[epoch, status]]}``
    and ``{"op": "done", "id", "step"}``. Status codes and ids only, no personal data.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def add(
        self, push_id: str, referral_id: str, reference: str, steps: list[tuple[float, str]]
    ) -> None:
        self._append(
            {
                "op": "add",
                "id": push_id,
                "referral_id": referral_id,
                "reference": reference,
                "steps": [[due, status] for due, status in steps],
            }
        )

    def done(self, push_id: str, step: int) -> None:
        self._append({"op": "done", "id": push_id, "step": step})

    def pending(self) -> list[tuple[str, str, str, list[tuple[int, float, str]]]]:
        """Every push with steps the hub has not taken: (id, referral, reference, steps)."""
        if not self.path.exists():
            return []
        added: dict[str, dict[str, Any]] = {}
        done: dict[str, set[int]] = {}
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    if entry["op"] == "add":
                        added[entry["id"]] = entry
                    elif entry["op"] == "done":
                        done.setdefault(entry["id"], set()).add(int(entry["step"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash
        result = []
        for push_id, entry in added.items():
            taken = done.get(push_id, set())
            steps = [
                (i, float(due), str(status))
                for i, (due, status) in enumerate(entry["steps"])
                if i not in taken
            ]
            if steps:
                result.append((push_id, entry["referral_id"], entry["reference"], steps))
        return result

    def compact(self) -> None:
        """Rewrite the journal with only what is still owed (called at start)."""
        if not self.path.exists():
            return
        owed = self.pending()
        with self._lock:
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as fh:
                for push_id, referral_id, reference, steps in owed:
                    entry = {
                        "op": "add",
                        "id": push_id,
                        "referral_id": referral_id,
                        "reference": reference,
                        "steps": [[due, status] for _, due, status in steps],
                    }
                    fh.write(json.dumps(entry) + "\n")
            tmp.replace(self.path)


class StatusPusher:
    """Reports status changes to the hub (`POST {hub_url}/v1/agencies/{agency}/status`).

    Pushes run as background tasks so an unreachable hub never fails or slows the
    agency's own answer. Connection errors and 5xx are retried a bounded number of
    times with doubling backoff; a 4xx is the hub refusing, so it is not retried.
    Only ids and status codes are logged: the referral payload is personal data.
    ``headers_for(body)``, if given, adds headers computed over the exact body bytes of
    each attempt (a signature, e.g. Standard Webhooks); the bearer header is sent too
    when ``hub_token`` is set.
    """

    def __init__(
        self,
        agency: str,
        hub_url: str | None,
        hub_token: str | None,
        *,
        attempts: int = 20,
        backoff_s: float = 0.2,
        timeout_s: float = 5.0,
        headers_for: Callable[[bytes], dict[str, str]] | None = None,
        journal: Path | None = None,
    ) -> None:
        self.agency = agency
        self._journal = PushJournal(journal) if journal is not None else None
        self._resumed = False
        self._url = f"{hub_url.rstrip('/')}/v1/agencies/{agency}/status" if hub_url else None
        self._headers = {"Authorization": f"Bearer {hub_token}"} if hub_token else {}
        self._headers_for = headers_for
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._url is not None

    async def start(self) -> None:
        if self._session is None and self.enabled:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        if self._journal is not None and self.enabled and not self._resumed:
            self._resumed = True
            owed = self._journal.pending()
            self._journal.compact()
            for push_id, referral_id, reference, steps in owed:
                self._spawn(self._run(push_id, referral_id, reference, steps))
            if owed:
                log.info("status_pushes_resumed", agency=self.agency, pushes=len(owed))

    async def close(self) -> None:
        """Cancel pending pushes and close the session (called from the app's lifespan)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def schedule(
        self, referral_id: str, reference: str, steps: list[tuple[float, str]]
    ) -> asyncio.Task[None] | None:
        """Push `steps` — (seconds after now, status) — in order, in one background task;
        journalled first (when there is a journal) so a restart resumes what is owed."""
        if not self.enabled:
            return None
        push_id = uuid.uuid4().hex
        now = time.time()
        due = [(now + delay_s, status) for delay_s, status in steps]
        if self._journal is not None:
            self._journal.add(push_id, referral_id, reference, due)
        indexed = [(i, at, status) for i, (at, status) in enumerate(due)]
        return self._spawn(self._run(push_id, referral_id, reference, indexed))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(
        self,
        push_id: str,
        referral_id: str,
        reference: str,
        steps: list[tuple[int, float, str]],
    ) -> None:
        try:
            for index, due, status in steps:
                wait = due - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                outcome = await self._push(referral_id, status, reference)
                if outcome == "gave_up":
                    return  # still owed: the journal keeps it for the next start
                if self._journal is not None:
                    self._journal.done(push_id, index)
        except Exception as exc:  # a bug here must not vanish into "never retrieved"
            log.error("status_push_crashed", referral_id=referral_id, error=type(exc).__name__)

    async def push(self, referral_id: str, status: str, reference: str) -> bool:
        """Send one status change with retries; True if the hub accepted it. Never raises."""
        return await self._push(referral_id, status, reference) == "accepted"

    async def _push(self, referral_id: str, status: str, reference: str) -> str:
        """``accepted``, ``refused`` (a 4xx: the hub will never take it) or ``gave_up``."""
        if self._url is None:
            return "gave_up"
        await self.start()
        assert self._session is not None
        body = {
            "referral_id": referral_id,
            "status": status,
            "reference": reference,
            "occurred_at": utc_now().isoformat(),
        }
        raw = json.dumps(body).encode()  # the bytes a signature covers, same on every attempt
        ids = {"agency": self.agency, "referral_id": referral_id, "status": status}
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            headers = {**self._headers, "Content-Type": "application/json"}
            if self._headers_for is not None:
                headers.update(self._headers_for(raw))
            hint = 0.0
            try:
                async with self._session.post(self._url, data=raw, headers=headers) as r:
                    code = r.status
                    hint = _retry_after_s(r.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("status_push_failed", attempt=attempt, error=type(exc).__name__, **ids)
            else:
                if code < 300:
                    log.info("status_pushed", attempt=attempt, http_status=code, **ids)
                    return "accepted"
                if code < 500:
                    log.error("status_push_refused", http_status=code, **ids)
                    return "refused"
                log.warning("status_push_failed", attempt=attempt, http_status=code, **ids)
            if attempt < self._attempts:
                await asyncio.sleep(max(delay, hint))  # the hub's Retry-After (a 503) first
                # ~75 s in all: a real agency's queue outlasts a restart of the hub or a
                # short outage of its database (the fault suite stops PostgreSQL for 30 s)
                delay = min(delay * 2, 5.0)
        log.error("status_push_gave_up", attempts=self._attempts, **ids)
        return "gave_up"


def _retry_after_s(value: str | None) -> float:
    """A Retry-After (either form, the SDK's one parser), at most 30 s; 0 if absent or odd."""
    return min(retry_after(value) or 0.0, 30.0)


# --------------------------------------------------------------------------- app


@dataclass
class SandboxApp:
    """A pushing agency's app with its ledger, fault knobs and (journalled) status pusher."""

    app: FastAPI
    ledger: SandboxLedger
    faults: Faults
    pusher: StatusPusher


def sandbox_app(
    title: str,
    agency: str,
    *,
    hub_url: str | None,
    hub_token: str | None,
    state_file: Path | None,
) -> SandboxApp:
    """The set-up every pushing REST sandbox shares: the ledger in ``state_file``, the push
    journal next to it, the pusher opened and closed with the app, ``app.state`` exposing
    all three to tests, and the ``/_sandbox/*`` routes."""
    ledger = SandboxLedger(state_file)
    faults = Faults()
    pusher = StatusPusher(
        agency,
        hub_url,
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

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.ledger = ledger
    app.state.faults = faults
    app.state.pusher = pusher
    add_sandbox_routes(app, ledger, faults)
    return SandboxApp(app, ledger, faults, pusher)
