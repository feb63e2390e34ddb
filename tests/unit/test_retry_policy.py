"""The retry policy as a pure decision, every branch, without Kafka, an agency or a clock:
after each call, call again after a pause, reroute to retry topic N, dead-letter, or
delivered; and a record from a retry topic waits until it is due."""

from __future__ import annotations

import itertools

import pytest

from hub.errors import DeliveryError, PermanentError, RetryableError
from hub.retry_policy import (
    RETRY_AFTER_CAP_S,
    CallAgain,
    DeadLetter,
    Decision,
    Delivered,
    Reroute,
    RetryPolicy,
    held_until,
    retry_state,
)
from hub.retry_topics import H_ATTEMPTS, H_DUE, H_LEVEL, RetryState, retry_topic
from hub.settings import RetrySettings

POLICY = RetryPolicy(
    attempts=3, initial_s=0.2, max_s=5.0, jitter_s=0.2, topic_delays_s=(60.0, 600.0, 3600.0)
)
NOW = 1000.0
FRESH = RetryState()


def retryable(retry_after_s: float | None = None) -> RetryableError:
    return RetryableError("503", error_class="http_503", retry_after_s=retry_after_s)


def permanent(retry_after_s: float | None = None) -> PermanentError:
    return PermanentError("400", error_class="http_400", retry_after_s=retry_after_s)


def test_the_settings_are_the_policy() -> None:
    assert RetryPolicy.from_settings(RetrySettings()) == RetryPolicy(
        attempts=5, initial_s=0.2, max_s=5.0, jitter_s=0.2, topic_delays_s=(60.0, 600.0, 3600.0)
    )


@pytest.mark.parametrize(("earlier", "calls"), [(0, 1), (0, 3), (4, 1), (4, 2)])
def test_an_answer_is_delivered_counting_every_call(earlier: int, calls: int) -> None:
    record = RetryState(level=2, attempts=earlier, due=NOW - 1)
    assert POLICY.after_call(record, calls, None, NOW) == Delivered(earlier + calls)


@pytest.mark.parametrize(
    ("calls", "jitter", "after_s"),
    [
        (1, 0.0, 0.2),  # initial_s
        (2, 0.0, 0.4),  # doubling
        (1, 0.5, 0.3),  # plus half of jitter_s
        (2, 0.99, 0.4 + 0.99 * 0.2),
    ],
)
def test_a_retryable_failure_is_called_again_after_the_backoff(
    calls: int, jitter: float, after_s: float
) -> None:
    error = retryable()
    decision = POLICY.after_call(FRESH, calls, error, NOW, jitter)
    assert decision == CallAgain(pytest.approx(after_s), error)  # type: ignore[arg-type]


def test_the_backoff_is_capped_at_max_s_jitter_included() -> None:
    policy = RetryPolicy(
        attempts=10, initial_s=0.2, max_s=5.0, jitter_s=0.2, topic_delays_s=(60.0,)
    )
    pauses = [policy.after_call(FRESH, n, retryable(), NOW, 0.99) for n in range(1, 10)]
    assert all(isinstance(p, CallAgain) for p in pauses)
    after = [p.after_s for p in pauses if isinstance(p, CallAgain)]
    assert after == pytest.approx([0.398, 0.598, 0.998, 1.798, 3.398, 5.0, 5.0, 5.0, 5.0])
    assert policy.backoff_s(60, 0.0, None) == 5.0  # far past any float trouble


def test_the_last_quick_call_reroutes_to_the_first_retry_topic() -> None:
    error = retryable()
    assert POLICY.after_call(FRESH, 3, error, NOW) == Reroute(1, NOW + 60.0, 3, error)


@pytest.mark.parametrize(
    ("retry_after_s", "after_s"),
    [
        (0.0, 0.2),  # no hint worth the name: the backoff
        (0.1, 0.2),  # shorter than the backoff: the backoff wins
        (2.0, 2.0),  # longer: the agency's word
        (5.0, 5.0),  # exactly max_s: still waited out in process
    ],
)
def test_a_retry_after_up_to_max_s_is_waited_out_in_process(
    retry_after_s: float, after_s: float
) -> None:
    error = retryable(retry_after_s)
    assert POLICY.after_call(FRESH, 1, error, NOW) == CallAgain(after_s, error)


@pytest.mark.parametrize(
    ("retry_after_s", "due"),
    [
        (5.01, NOW + 60.0),  # beyond max_s ends the quick calls; the topic delay is longer
        (120.0, NOW + 120.0),  # longer than the topic delay: no earlier than the hint
        (RETRY_AFTER_CAP_S, NOW + RETRY_AFTER_CAP_S),
        (10 * 365 * 86400.0, NOW + RETRY_AFTER_CAP_S),  # absurd: capped
    ],
)
def test_a_retry_after_beyond_max_s_goes_to_the_retry_topic_at_once(
    retry_after_s: float, due: float
) -> None:
    error = retryable(retry_after_s)
    assert POLICY.after_call(FRESH, 1, error, NOW) == Reroute(1, due, 1, error)


def test_retry_topics_follow_one_another_then_the_dead_letter_topic() -> None:
    error = retryable()
    for level, delay in enumerate(POLICY.topic_delays_s):
        record = RetryState(level=level, attempts=3 * level)
        decision = POLICY.after_call(record, 3, error, NOW)
        assert decision == Reroute(level + 1, NOW + delay, 3 * level + 3, error)
    last = RetryState(level=3, attempts=9)
    assert POLICY.after_call(last, 3, error, NOW) == DeadLetter(4, NOW, 12, error)


@pytest.mark.parametrize(("level", "calls"), [(0, 1), (0, 2), (2, 1), (3, 3)])
def test_a_permanent_failure_is_dead_lettered_at_once(level: int, calls: int) -> None:
    error = permanent(retry_after_s=1.0)  # a hint on a permanent error changes nothing
    record = RetryState(level=level, attempts=level)
    decision = POLICY.after_call(record, calls, error, NOW)
    assert decision == DeadLetter(level + 1, NOW, level + calls, error)


def test_a_foreign_exception_is_a_connector_bug_retried_later_not_now() -> None:
    decision = POLICY.after_call(FRESH, 1, KeyError("Παπαδοπούλου"), NOW)
    assert isinstance(decision, Reroute)
    assert (decision.level, decision.due, decision.attempts) == (1, NOW + 60.0, 1)
    assert isinstance(decision.error, RetryableError)
    assert (decision.error.error_class, str(decision.error)) == ("connector_bug", "connector error")


def test_a_delivery_error_neither_retryable_nor_permanent_waits_on_a_retry_topic() -> None:
    error = DeliveryError("?", error_class="odd")
    assert POLICY.after_call(FRESH, 1, error, NOW) == Reroute(1, NOW + 60.0, 1, error)


def test_after_failure_routes_a_hub_side_error_by_level_alone() -> None:
    mapping_error = PermanentError("mapping failed: ValueError", error_class="mapping_error")
    assert POLICY.after_failure(FRESH, 0, mapping_error, NOW) == DeadLetter(
        1, NOW, 0, mapping_error
    )
    error = retryable()
    assert POLICY.after_failure(RetryState(level=1), 5, error, NOW) == Reroute(
        2, NOW + 600.0, 5, error
    )


FAILURES: list[Exception | None] = [
    None,
    retryable(),
    retryable(0.1),
    retryable(5.0),
    retryable(120.0),
    retryable(1e9),
    permanent(),
    permanent(120.0),
    DeliveryError("?", error_class="odd"),
    KeyError("bug"),
]


def described(decision: Decision) -> tuple[object, ...]:
    """A decision with its error as class, error class and message (errors compare by
    identity, and a connector bug is a fresh error each time)."""
    fields = vars(decision).copy()
    error = fields.pop("error", None)
    summary = (type(error), error.error_class, str(error)) if error is not None else None
    return (type(decision), tuple(sorted(fields.items())), summary)


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_every_combination_keeps_the_policy_invariants(jitter: float) -> None:
    levels = range(len(POLICY.topic_delays_s) + 2)
    for level, calls, failure in itertools.product(levels, range(1, POLICY.attempts + 1), FAILURES):
        record = RetryState(level=level, attempts=2 * level)
        decision: Decision = POLICY.after_call(record, calls, failure, NOW, jitter)
        case = (level, calls, failure)
        again = POLICY.after_call(record, calls, failure, NOW, jitter)
        assert described(decision) == described(again), case  # no state, no randomness
        if failure is None:
            assert decision == Delivered(2 * level + calls), case
            continue
        hint = failure.retry_after_s if isinstance(failure, DeliveryError) else None
        if isinstance(decision, CallAgain):
            assert isinstance(failure, RetryableError), case
            assert calls < POLICY.attempts and (hint is None or hint <= POLICY.max_s), case
            assert 0.2 <= decision.after_s <= max(POLICY.max_s, hint or 0), case
            continue
        assert decision.attempts == 2 * level + calls, case
        assert decision.level == level + 1, case
        if isinstance(decision, DeadLetter):
            assert decision.due == NOW, case
            assert isinstance(failure, PermanentError) or level >= len(POLICY.topic_delays_s)
        else:
            assert isinstance(decision, Reroute), case
            assert not isinstance(failure, PermanentError), case
            assert not (
                isinstance(failure, RetryableError)
                and calls < POLICY.attempts
                and (hint is None or hint <= POLICY.max_s)
            ), case
            delay = POLICY.topic_delays_s[level]
            assert NOW + delay <= decision.due <= NOW + max(delay, RETRY_AFTER_CAP_S), case


# --------------------------------------------------------------- before a call: is it due?


def headers(level: int, due: float) -> list[tuple[str, bytes]]:
    return [
        ("ce_id", b"e-1"),
        (H_LEVEL, str(level).encode()),
        (H_ATTEMPTS, b"3"),
        (H_DUE, f"{due:.3f}".encode()),
    ]


def test_retry_headers_count_on_the_retry_topic_they_name() -> None:
    state = retry_state("dypa", retry_topic("dypa", 2), headers(2, NOW + 5))
    assert (state.level, state.attempts, state.due) == (2, 3, NOW + 5)


@pytest.mark.parametrize(
    "topic",
    ["kk.referrals.v1", retry_topic("dypa", 1), retry_topic("opeka", 2), "kk.dlq.dypa"],
)
def test_retry_headers_copied_elsewhere_start_afresh(topic: str) -> None:
    assert retry_state("dypa", topic, headers(2, NOW + 5)) == RetryState()


def test_unreadable_retry_headers_start_afresh() -> None:
    for level in (1, 2):  # a readable level, on its own topic, with a due time that is not
        garbled = [(H_LEVEL, str(level).encode()), (H_DUE, b"soon")]
        assert retry_state("dypa", retry_topic("dypa", level), garbled) == RetryState()
    assert retry_state("dypa", retry_topic("dypa", 1), [(H_LEVEL, b"one")]) == RetryState()
    assert retry_state("dypa", "kk.referrals.v1", []) == RetryState()


@pytest.mark.parametrize(
    ("due", "held"), [(NOW + 0.001, NOW + 0.001), (NOW + 60, NOW + 60), (NOW, None), (0.0, None)]
)
def test_a_record_waits_until_it_is_due(due: float, held: float | None) -> None:
    assert held_until(RetryState(level=1, due=due), NOW) == held
