"""Non-blocking retries: per-connector retry topics and a dead-letter topic.

After the quick in-process attempts, a delivery that still fails is re-published, unchanged
(same CloudEvent, same event id, so the same idempotency key), to
``kk.retry.<connector>.<n>`` with a due time; the connector consumes its retry topics and
pauses a partition until its head record is due. After the last level, or at once for a
permanent failure, the record goes to ``kk.dlq.<connector>``. Every such record carries
headers saying why (error class, redacted message), how often it was tried, since when, and
where it came from — never personal data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from hub.events import OutgoingRecord

H_ERROR_CLASS = "x-dsy-error-class"
H_ERROR = "x-dsy-error"
H_ATTEMPTS = "x-dsy-attempts"
H_FIRST_FAILURE = "x-dsy-first-failure"
H_ORIGIN = "x-dsy-origin"
H_DUE = "x-dsy-due"
H_LEVEL = "x-dsy-level"
H_REPLAYED_BY = "x-dsy-replayed-by"
H_REDRIVE_FOR = "x-dsy-redrive-for"
"""On a re-driven referral record: the agencies still owed it (comma-separated). The others
already have it, so their connectors skip the record instead of calling them again."""
OWN_HEADERS = frozenset(
    {
        H_ERROR_CLASS,
        H_ERROR,
        H_ATTEMPTS,
        H_FIRST_FAILURE,
        H_ORIGIN,
        H_DUE,
        H_LEVEL,
        H_REPLAYED_BY,
        H_REDRIVE_FOR,
    }
)


def retry_topic(agency: str, level: int) -> str:
    return f"kk.retry.{agency}.{level}"


def dlq_topic(agency: str) -> str:
    return f"kk.dlq.{agency}"


def connector_topics(agency: str, levels: int) -> list[str]:
    return [retry_topic(agency, n) for n in range(1, levels + 1)] + [dlq_topic(agency)]


@dataclass(frozen=True)
class RetryState:
    """What the retry headers of a record say (level 0: a first delivery)."""

    level: int = 0
    attempts: int = 0
    first_failure: datetime | None = None
    due: float = 0.0
    origin: str = ""

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]]) -> RetryState:
        h: Mapping[str, bytes] = dict(headers)
        try:
            first = h.get(H_FIRST_FAILURE)
            return cls(
                level=int(h.get(H_LEVEL, b"0")),
                attempts=int(h.get(H_ATTEMPTS, b"0")),
                first_failure=datetime.fromisoformat(first.decode()) if first else None,
                due=float(h.get(H_DUE, b"0")),
                origin=h.get(H_ORIGIN, b"").decode(),
            )
        except ValueError:
            return cls()  # unreadable retry headers: treat as a fresh delivery


def reroute(
    headers: Sequence[tuple[str, bytes]],
    key: bytes | None,
    value: bytes | None,
    *,
    topic: str,
    level: int,
    attempts: int,
    first_failure: datetime,
    due: float,
    origin: str,
    error_class: str,
    error: str,
    replayed_by: str | None = None,
) -> OutgoingRecord:
    """The same CloudEvent (ce_* headers and body untouched) with fresh retry headers."""
    kept = [(k, v) for k, v in headers if k not in OWN_HEADERS]
    extra = [
        (H_LEVEL, str(level).encode()),
        (H_ATTEMPTS, str(attempts).encode()),
        (H_FIRST_FAILURE, first_failure.astimezone(UTC).isoformat().encode()),
        (H_DUE, f"{due:.3f}".encode()),
        (H_ORIGIN, origin.encode()),
        (H_ERROR_CLASS, error_class.encode()),
        (H_ERROR, error[:300].encode()),
    ]
    if replayed_by:
        extra.append((H_REPLAYED_BY, replayed_by.encode()))
    return OutgoingRecord(topic=topic, key=key or b"", headers=kept + extra, value=value or b"")
