"""The sandboxes' fault knobs: Retry-After on injected failures, and the count of clients
that come back for the same key before the Retry-After they were sent has passed."""

from __future__ import annotations

import pytest

from connectors.sandbox_kit import FaultKnobs, Faults, apply_faults
from connectors.sandbox_kit import faults as fault_knobs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(fault_knobs.time, "monotonic", fake)
    return fake


def throttling(retry_after_s: float = 1.5) -> Faults:
    return Faults(FaultKnobs(fail_rate=1.0, status=429, retry_after_s=retry_after_s))


async def test_injected_failures_carry_retry_after_in_whole_seconds(clock: Clock) -> None:
    faults = throttling(1.5)
    answer = await apply_faults(faults, key="k1")
    assert answer is not None and answer.status_code == 429
    assert answer.headers["retry-after"] == "2"  # ceil: never invite a retry too early
    assert faults.describe()["retry_after_sent"] == 1


async def test_without_the_knob_injected_failures_have_no_retry_after(clock: Clock) -> None:
    faults = Faults(FaultKnobs(fail_rate=1.0, status=503))
    answer = await apply_faults(faults, key="k1")
    assert answer is not None and "retry-after" not in answer.headers
    assert (await apply_faults(faults, key="k1")) is not None
    assert faults.describe()["retry_after_sent"] == 0
    assert faults.describe()["early_retries"] == 0


async def test_a_repeat_before_retry_after_is_counted_as_early(clock: Clock) -> None:
    faults = throttling(2.0)
    await apply_faults(faults, key="k1")
    clock.now += 1.0
    await apply_faults(faults, key="k1")  # 1 s into a 2 s Retry-After
    await apply_faults(faults, key="other")  # a different key was never told to wait
    assert faults.early_retries == 1
    # the early repeat was answered with a fresh Retry-After: 2 s from now
    clock.now += 1.95  # within the 0.1 s tolerance
    await apply_faults(faults, key="k1")
    assert faults.early_retries == 1
    assert faults.describe()["early_retries"] == 1


async def test_a_key_that_came_back_in_time_is_forgotten(clock: Clock) -> None:
    faults = throttling(2.0)
    await apply_faults(faults, key="k1")
    faults.set(FaultKnobs())  # the agency recovers; counters and windows survive
    clock.now += 2.0
    assert await apply_faults(faults, key="k1") is None
    assert faults.early_retries == 0 and "k1" not in faults._not_before
    assert await apply_faults(faults, key="k1") is None
    assert faults.early_retries == 0


async def test_an_outage_retry_after_is_tracked_too(clock: Clock) -> None:
    faults = Faults(FaultKnobs(outage_s=10, status=503))
    answer = await apply_faults(faults, key="k1")
    assert answer is not None and answer.headers["retry-after"] == "10"
    clock.now += 3
    await apply_faults(faults, key="k1")
    assert (faults.retry_after_sent, faults.early_retries) == (2, 1)


async def test_requests_without_a_key_are_answered_but_not_tracked(clock: Clock) -> None:
    faults = throttling()
    assert await apply_faults(faults) is not None
    assert await apply_faults(faults) is not None
    assert (faults.retry_after_sent, faults.early_retries) == (2, 0)
    assert faults._not_before == {}


async def test_memory_stays_bounded(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fault_knobs, "MAX_TRACKED_KEYS", 3)
    faults = throttling(60)
    for n in range(5):
        await apply_faults(faults, key=f"k{n}")
    assert list(faults._not_before) == ["k2", "k3", "k4"]  # the oldest went first
    clock.now += 61  # all passed: the next insert sweeps them away
    await apply_faults(faults, key="k9")
    assert list(faults._not_before) == ["k9"]


def test_retry_after_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_RETRY_AFTER_S", "2.5")
    assert FaultKnobs.from_env().retry_after_s == 2.5
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        FaultKnobs(retry_after_s=-1)
