"""A circuit breaker per connector: after ``threshold`` consecutive failed deliveries the
connector stops consuming for ``cooldown_s``, then lets one delivery through as a probe.
A failing agency then costs one call per cooldown instead of a storm, and other connectors,
with their own breakers and consumer groups, are never affected."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        *,
        max_cooldown_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] = lambda _: None,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown_s = cooldown_s
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._clock = clock
        self._on_change = on_change
        self.failures = 0
        self.state = BreakerState.CLOSED
        self.opened_at = 0.0

    def _set(self, state: BreakerState) -> None:
        if state != self.state:
            self.state = state
            self._on_change(state)

    def allows(self) -> bool:
        """May the connector consume now? Moves OPEN to HALF_OPEN once the cooldown is over."""
        if self.state == BreakerState.OPEN and self._clock() - self.opened_at >= self.cooldown_s:
            self._set(BreakerState.HALF_OPEN)
        return self.state != BreakerState.OPEN

    def success(self) -> None:
        self.failures = 0
        self.cooldown_s = self.base_cooldown_s
        self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state == BreakerState.HALF_OPEN:
            self.cooldown_s = min(self.cooldown_s * 2, self.max_cooldown_s)
            self._open()
        elif self.state == BreakerState.CLOSED and self.failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.opened_at = self._clock()
        self._set(BreakerState.OPEN)
