"""Supervision of a process's long-running tasks (relay, projector, connectors, pollers).

Before this, a task that raised was logged and left dead while ``/readyz`` stayed green: one
agency's consumer could stop for good on a single bad record, and nobody would know. Now
every long-running task runs under a ``Supervisor``:

- a task that ends while the process is not stopping (it raised, or it returned although it
  is meant to run until stopped) is logged (``task ended unexpectedly``: task name, error
  class and the code location, never the message, which may echo personal data), counted in
  ``diasyndesi_task_restarts_total{task}`` and started again after an exponential backoff
  (``initial_s`` doubling up to ``max_s``; the count of quick failures resets once a run has
  lasted ``healthy_after_s``);
- while it is waiting to be restarted it is *down*: ``down()`` names it, ``/readyz`` answers
  503 with that name and ``diasyndesi_task_up{task}`` is 0;
- ``stop()`` is graceful: the components are told to stop by their owner first, then the
  supervisor waits for the tasks to finish and restarts nothing.

A task is given as a factory (a coroutine cannot be awaited twice). One-shot tasks (connect
the producer once, rewind a consumer once) are supervised too: restarted if they raise,
forgotten once they return. Task names become a metric label, so they must come from a
bounded set: component kinds like ``relay``, ``projector``, ``connector:<agency>``,
``poller:<agency>``, never an id of a referral or a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from hub.logs import get_logger
from hub.metrics import HubMetrics

log = get_logger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


def where(exc: BaseException) -> str:
    """The innermost frame of ``exc`` as ``file:line in function``: enough to find the bug,
    with no exception message (a pydantic or driver message can carry the data it saw)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


@dataclass
class _Supervised:
    name: str
    factory: TaskFactory
    oneshot: bool
    task: asyncio.Task[None] | None = None
    down_since: float | None = None
    restarts: int = 0
    failures: int = field(default=0, repr=False)


class Supervisor:
    """Starts named tasks, restarts those that end unexpectedly, reports which are down."""

    def __init__(
        self,
        metrics: HubMetrics,
        *,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self.metrics = metrics
        self.initial_s = initial_s
        self.max_s = max_s
        self.healthy_after_s = healthy_after_s
        self._tasks: list[_Supervised] = []
        self._stopping = asyncio.Event()

    def start(self, name: str, factory: TaskFactory, *, oneshot: bool = False) -> None:
        """Run ``factory()`` as task ``name`` under supervision, from now until ``stop()``."""
        entry = _Supervised(name, factory, oneshot)
        self._tasks.append(entry)
        self._gauge(entry, 1)
        entry.task = asyncio.create_task(self._keep(entry), name=name)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def down(self) -> list[str]:
        """Names of the supervised tasks not running now (waiting for their restart)."""
        return sorted({t.name for t in self._tasks if t.down_since is not None})

    def restarts(self, name: str) -> int:
        """How often tasks named ``name`` have been restarted (for tests and the ops page)."""
        return sum(t.restarts for t in self._tasks if t.name == name)

    async def _keep(self, entry: _Supervised) -> None:
        while True:
            began = time.monotonic()
            error: Exception | None = None
            try:
                await entry.factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            if self._stopping.is_set() or (error is None and entry.oneshot):
                self._forget(entry)
                return
            if time.monotonic() - began >= self.healthy_after_s:
                entry.failures = 0  # it ran well for a while: start the backoff afresh
            entry.failures += 1
            delay = min(self.initial_s * 2 ** (entry.failures - 1), self.max_s)
            entry.down_since = time.monotonic()
            entry.restarts += 1
            self.metrics.task_restarts.labels(entry.name).inc()
            self._gauge(entry, 0)
            log.error(
                "task ended unexpectedly",
                task=entry.name,
                error=type(error).__name__ if error else "returned",
                where=where(error) if error else "",
                restart_in_s=round(delay, 2),
                failures=entry.failures,
            )
            if await self._stopped_within(delay):
                self._forget(entry)
                return
            entry.down_since = None
            self._gauge(entry, 1)
            log.info("task restarted", task=entry.name, restarts=entry.restarts)

    def _gauge(self, entry: _Supervised, up: int) -> None:
        if not entry.oneshot:  # a one-shot task is not expected to stay up
            self.metrics.task_up.labels(entry.name).set(up)

    def _forget(self, entry: _Supervised) -> None:
        entry.down_since = None
        if entry.oneshot and entry in self._tasks:
            self._tasks.remove(entry)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Graceful: the owner has told its components to stop; wait for the tasks to end
        (cancel what is still running after ``timeout_s``) and restart nothing."""
        self._stopping.set()
        await self._finish(timeout_s)

    async def abort(self) -> None:
        """Crash-like: cancel every task now."""
        self._stopping.set()
        for entry in self._tasks:
            if entry.task is not None:
                entry.task.cancel()
        await self._finish(10.0)

    async def _finish(self, timeout_s: float) -> None:
        tasks = [t.task for t in list(self._tasks) if t.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            log.warning("task did not stop in time; cancelled", task=task.get_name())
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for entry in self._tasks:
            self._gauge(entry, 0)
