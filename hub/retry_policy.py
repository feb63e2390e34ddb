"""The one retry policy as a pure decision: after each call to an agency, what becomes of the
record. Call again in process after a pause, put it on retry topic N until a due time,
dead-letter it, or it is delivered. And before a call: a record read from a retry topic
waits until it is due.

No I/O and no clock, randomness or state of its own (the runner passes the time and the
jitter draw in), so every branch is tested without Kafka or an agency
(``tests/unit/test_retry_policy.py``). The runner (``hub/connector_runner.py``) acts on the
decisions; the Kafka loop (``hub/connector_loop.py``) holds retry partitions by them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hub.errors import DeliveryError, PermanentError, RetryableError
from hub.retry_topics import RetryState, retry_topic
from hub.settings import RetrySettings

# An agency's Retry-After is honoured in full up to this bound (the last default retry-topic
# delay). Why a bound at all: the hint is the agency's word, and a broken or hostile one (an
# HTTP date years ahead, "Retry-After: 99999999") must not park a referral out of sight;
# and a record waiting on a retry partition holds the records behind it on that partition
# (the partition is paused until its head is due), so the bound is also the longest that
# other referrals of the same agency can be held back by one such hint.
RETRY_AFTER_CAP_S = 3600.0


@dataclass(frozen=True)
class Delivered:
    """The agency answered (the runner still checks the answer): record it, commit."""

    attempts: int


@dataclass(frozen=True)
class CallAgain:
    """Call the agency again in process after ``after_s`` (the backoff, or its Retry-After
    when longer); ``error`` is what the last call failed with."""

    after_s: float
    error: DeliveryError


@dataclass(frozen=True)
class Reroute:
    """Publish the record to the agency's retry topic ``level``, due at ``due`` (seconds on
    the runner's clock)."""

    level: int
    due: float
    attempts: int
    error: DeliveryError


@dataclass(frozen=True)
class DeadLetter:
    """Publish the record to the agency's dead-letter topic: a permanent failure, or no
    retry topic left. ``level`` and ``due`` go into its retry headers like a reroute's."""

    level: int
    due: float
    attempts: int
    error: DeliveryError


Decision = Delivered | CallAgain | Reroute | DeadLetter


def connector_bug() -> RetryableError:
    """What a connector that raised something other than a ``DeliveryError`` counts as: it
    broke its contract, so the record is retried later, never quickly in process."""
    return RetryableError("connector error", error_class="connector_bug")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` quick calls per consumption of a record (exponential backoff from
    ``initial_s``, doubling, plus up to ``jitter_s``, capped at ``max_s``; an agency's
    Retry-After is waited out when it is longer, but one beyond ``max_s`` ends the quick
    calls), then one retry topic per ``topic_delays_s`` entry, then the dead-letter topic."""

    attempts: int
    initial_s: float
    max_s: float
    jitter_s: float
    topic_delays_s: tuple[float, ...]

    @classmethod
    def from_settings(cls, retry: RetrySettings) -> RetryPolicy:
        return cls(
            attempts=retry.attempts,
            initial_s=retry.initial_s,
            max_s=retry.max_s,
            jitter_s=retry.jitter_s,
            topic_delays_s=tuple(retry.topic_delays_s),
        )

    def after_call(
        self,
        record: RetryState,
        calls: int,
        failure: Exception | None,
        now: float,
        jitter: float = 0.0,
    ) -> Decision:
        """The decision after the ``calls``-th call for this consumption of a record whose
        retry headers say ``record``: ``failure`` is what the call raised (None: the agency
        answered), ``now`` the runner's clock, ``jitter`` a draw from [0, 1) that scales
        ``jitter_s``."""
        attempts = record.attempts + calls
        if failure is None:
            return Delivered(attempts)
        error = failure if isinstance(failure, DeliveryError) else connector_bug()
        hint = error.retry_after_s
        quick = isinstance(failure, RetryableError) and calls < self.attempts
        if quick and not (hint is not None and hint > self.max_s):
            return CallAgain(self.backoff_s(calls, jitter, hint), error)
        return self.after_failure(record, attempts, error, now)

    def after_failure(
        self, record: RetryState, attempts: int, error: DeliveryError, now: float
    ) -> Reroute | DeadLetter:
        """Where a record goes once it failed ``attempts`` times in all with ``error``: the
        next retry topic, no earlier than the agency's Retry-After (capped), or the
        dead-letter topic (at once for a permanent error, or after the last retry topic)."""
        level = record.level + 1
        if isinstance(error, PermanentError) or level > len(self.topic_delays_s):
            return DeadLetter(level, now, attempts, error)
        hint = min(error.retry_after_s or 0, RETRY_AFTER_CAP_S)
        return Reroute(level, now + max(self.topic_delays_s[level - 1], hint), attempts, error)

    def backoff_s(self, calls: int, jitter: float, hint: float | None) -> float:
        """The pause after the ``calls``-th failed call: never shorter than the agency's
        hint (a hint beyond ``max_s`` ends the quick calls instead: ``after_call``)."""
        base = min(self.initial_s * 2.0 ** (calls - 1) + jitter * self.jitter_s, self.max_s)
        return max(base, hint) if hint else base


def retry_state(agency: str, topic: str, headers: Iterable[tuple[str, bytes]]) -> RetryState:
    """What a consumed record's retry headers say, trusted only on the agency's retry topic
    of the level they name: headers copied from elsewhere start afresh."""
    state = RetryState.from_headers(headers)
    if state.level and topic != retry_topic(agency, state.level):
        return RetryState()
    return state


def held_until(record: RetryState, now: float) -> float | None:
    """The due time a record read from a retry topic must wait for, if it is not yet due
    (its partition is paused until then); None when it may be delivered now."""
    return record.due if record.due > now else None
