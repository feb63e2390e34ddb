"""Status pushed back to the hub as an agency would: journalled (a restarted sandbox
resumes), retried with backoff, honouring the hub's Retry-After."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from connectors.sandbox_kit.ledger import utc_now
from diasyndesi_sdk.classify import retry_after

log = structlog.get_logger(__name__)


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

    def referrals(self) -> set[str]:
        """Every referral with a push in the journal (owed or taken)."""
        if not self.path.exists():
            return set()
        found = set()
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    if entry["op"] == "add":
                        found.add(str(entry["referral_id"]))
                except (ValueError, KeyError, TypeError):
                    continue
        return found

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
        self._answered: set[str] = set()  # referrals whose answer is scheduled (see answer_once)

    @property
    def enabled(self) -> bool:
        return self._url is not None

    async def start(self) -> None:
        if self._session is None and self.enabled:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        if self._journal is not None and self.enabled and not self._resumed:
            self._resumed = True
            self._answered |= self._journal.referrals()  # before compacting forgets some
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
        self._answered.add(referral_id)
        now = time.time()
        due = [(now + delay_s, status) for delay_s, status in steps]
        if self._journal is not None:
            self._journal.add(push_id, referral_id, reference, due)
        indexed = [(i, at, status) for i, (at, status) in enumerate(due)]
        return self._spawn(self._run(push_id, referral_id, reference, indexed))

    def answer_once(
        self, referral_id: str, reference: str, steps: list[tuple[float, str]]
    ) -> asyncio.Task[None] | None:
        """``schedule``, unless this referral's answer was already scheduled. Called for a
        new referral and for a repeat alike: killed between recording a referral and
        journalling its answer, the sandbox owes it, and the hub's repeat (same key) is
        the moment to make good (found by the fault suite's whole-tree SIGKILL)."""
        if referral_id in self._answered:
            return None
        return self.schedule(referral_id, reference, steps)

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
