"""A small supervisor of child processes, for ``diasyndesi up`` (production in miniature).

Each child runs in a session of its own (so a Ctrl+C reaches ``up`` alone, which then stops
the children in order) and is told by the kernel to die with ``up`` (``PR_SET_PDEATHSIG``),
so a crashed or SIGKILLed ``up`` leaves no orphan holding a port. Standard output of the
children is discarded (their ready lines are ``up``'s business, and the sandbox prints
secrets there); their logs go to ``up``'s standard error.

A child that exits while the tree is not stopping is logged (``child exited``: name, exit
code, restart delay) and started again after a backoff that doubles from ``initial_s`` up to
``max_s`` (reset once a run has lasted ``healthy_after_s``). A child may be bound to another
(``restart_with``): when that one exits, this one is killed at once (SIGKILL: nothing more
is committed) and restarted without delay. ``up`` binds the workers to the memory-only
broker, whose restart forgets every group's offsets: fresh worker processes read the fresh
logs from the start, where old ones would keep positions that skip records.

``stop()`` is graceful and ordered: SIGTERM to every child but the ``last`` ones (the broker),
wait, SIGKILL what is left; then the same for the last ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hub.broker import die_with_parent
from hub.errors import DiasyndesiError
from hub.logs import get_logger

log = get_logger(__name__)

Probe = Callable[[], Awaitable[bool]]


@dataclass
class ChildSpec:
    """What to run and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Probe
    restart: bool = True
    last: bool = False
    """Stopped after the others (infrastructure the others need to stop cleanly)."""
    restart_with: str | None = None
    """Killed and restarted at once whenever the child of this name exits."""


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0
    killed_for: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _preexec(parent: int) -> None:
    """In the child, before exec: die with the parent; if the parent is already gone (it
    died between fork and here), do not start at all."""
    die_with_parent()
    if os.getppid() != parent:
        os._exit(1)


async def _exited(child: Child, timeout_s: float) -> None:
    """Wait (in a thread, reaping it) until ``child`` has exited, at most ``timeout_s``."""
    if child.process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(child.process.wait, timeout_s)


class ProcessTree:
    """Starts children, restarts those that exit, stops them all in order."""

    def __init__(
        self,
        *,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        healthy_after_s: float = 60.0,
        stop_timeout_s: float = 20.0,
        poll_s: float = 0.1,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.healthy_after_s = healthy_after_s
        self.stop_timeout_s = stop_timeout_s
        self.poll_s = poll_s
        self.children: dict[str, Child] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def start(self, spec: ChildSpec) -> Child:
        """Start ``spec`` now and keep it running until ``stop()``."""
        child = Child(spec)
        self.children[spec.name] = child
        self._spawn(child)
        self._watchers.append(asyncio.create_task(self._watch(child), name=f"child:{spec.name}"))
        return child

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(  # noqa: S603 - our own commands, no shell
            child.spec.argv,
            env=child.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None,  # logs go where up's go
            start_new_session=True,
            preexec_fn=functools.partial(_preexec, os.getpid()),
        )
        child.started_at = time.monotonic()
        log.info("child started", child=child.name, pid=child.process.pid)

    async def _watch(self, child: Child) -> None:
        while True:
            process = child.process
            assert process is not None
            while process.poll() is None:
                if await self._stopped_within(self.poll_s):
                    return
            if self._stopping.is_set():
                return
            code = process.returncode
            for dependant in self.children.values():
                if dependant.spec.restart_with == child.name and dependant.running:
                    dependant.killed_for = child.name
                    self._signal(dependant, signal.SIGKILL)
            delay = self._next_delay(child)
            if child.killed_for is not None:
                log.warning(
                    "child exited",
                    child=child.name,
                    exit_code=code,
                    reason=f"{child.killed_for} exited",
                    restart_in_s=delay,
                )
            elif child.spec.restart:
                log.error("child exited", child=child.name, exit_code=code, restart_in_s=delay)
            else:
                log.error("child exited; not restarted", child=child.name, exit_code=code)
                return
            if await self._stopped_within(delay):
                return
            child.killed_for = None
            child.restarts += 1
            self._spawn(child)

    def _next_delay(self, child: Child) -> float:
        if child.killed_for is not None:
            return 0.0  # killed on purpose: back at once
        if time.monotonic() - child.started_at >= self.healthy_after_s:
            child.failures = 0
        child.failures += 1
        return float(round(min(self.initial_s * 2 ** (child.failures - 1), self.max_s), 2))

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def wait_ready(self, names: list[str], timeout_s: float) -> None:
        """Until every named child answers its ready probe; raises naming the first that
        did not within ``timeout_s`` (a child restarted meanwhile may still make it)."""
        deadline = time.monotonic() + timeout_s
        pending = list(names)
        while pending:
            if self._stopping.is_set():
                raise DiasyndesiError("stopped before the processes were ready")
            pending = [n for n in pending if not await self.children[n].spec.ready()]
            if pending and time.monotonic() > deadline:
                raise DiasyndesiError(f"not ready within {timeout_s:.0f} s: {', '.join(pending)}")
            if pending:
                await asyncio.sleep(0.1)

    def _signal(self, child: Child, sig: signal.Signals) -> None:
        if child.running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(sig)

    async def stop(self) -> None:
        """SIGTERM every child but the last ones and wait (SIGKILL after the timeout), then
        the last ones (the broker the others needed to commit and leave their groups)."""
        self._stopping.set()
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        first = [c for c in self.children.values() if not c.spec.last]
        last = [c for c in self.children.values() if c.spec.last]
        await self._terminate(first, self.stop_timeout_s)
        await self._terminate(last, 5.0)

    async def _terminate(self, children: list[Child], timeout_s: float) -> None:
        for child in children:
            self._signal(child, signal.SIGTERM)
        await asyncio.gather(*(_exited(c, timeout_s) for c in children))
        for child in children:
            if child.running:
                log.warning("child did not stop in time; killed", child=child.name)
                self._signal(child, signal.SIGKILL)
        await asyncio.gather(*(_exited(c, 5.0) for c in children))

    def kill(self) -> None:
        """SIGKILL every child now (a second Ctrl+C)."""
        self._stopping.set()
        for child in self.children.values():
            self._signal(child, signal.SIGKILL)
