"""The connector seam: what every agency connector implements, written down once.

Lifecycle (as Kafka Connect's SinkTask): ``start()`` once, then ``deliver()`` many times,
possibly concurrently, then ``stop()`` once. A connector only *classifies* failures: it
raises ``RetryableError`` (the agency may accept the same delivery later) or
``PermanentError`` (it never will); the hub owns retrying, with one policy for all.
No aiohttp, zeep or other library exception may escape ``deliver``.

Every delivery carries ``idempotency_key``, derived from (event id, agency): the same
referral re-sent after a crash, a re-drive or a replay carries the same key, so the agency
can recognise it. A connector returns the agency's own reference for the referral.
On rebalance the hub drains in-flight deliveries before giving up partitions; a connector
keeps no per-partition state.

Optional capabilities are mixins the hub looks for: ``PollsStatus`` (the hub asks for
status on an interval) and ``Withdraws`` (the hub tells the agency of a withdrawal). A family
declares them in its ``FamilySpec`` (``status``, ``supports``); the contract suite checks
that the connector matches.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from diasyndesi_sdk.connection import AgencyConnection
from diasyndesi_sdk.errors import PermanentError, RetryableError
from schemas.codes import EnrollmentStatus

__all__ = [
    "KEEPALIVE_S",
    "AgencyConnection",
    "Connector",
    "Delivery",
    "PermanentError",
    "PollsStatus",
    "Receipt",
    "RetryableError",
    "StatusReport",
    "Withdrawal",
    "Withdraws",
    "idempotency_key",
]


KEEPALIVE_S = 4.0
"""Pooled connections are dropped after this idle time: shorter than common server
keep-alives (uvicorn's is 5 s), so a connector never reuses a connection the agency is
closing at that moment (seen in benchmarks as resets after ~5 s idle)."""


def idempotency_key(event_id: str, agency: str) -> str:
    """Deterministic key per (event, agency): stable across re-publish, re-drive and replay."""
    digest = hashlib.sha256(f"{event_id}|{agency}".encode()).hexdigest()
    return f"dsy-{digest[:40]}"


@dataclass(frozen=True)
class Delivery:
    """One referral for one agency, already mapped to the agency's payload."""

    event_id: str
    referral_id: str
    agency: str
    idempotency_key: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Receipt:
    """What the agency said when it took the delivery."""

    reference: str | None
    status: EnrollmentStatus | None = None
    duplicate: bool = False


class Connector(ABC):
    """Base class of every agency connector (one instance per agency)."""

    family: ClassVar[str]

    def __init__(
        self, agency: str, connection: AgencyConnection, *, max_connections: int = 64
    ) -> None:
        self.agency = agency
        self.connection = connection
        self.max_connections = max_connections

    @abstractmethod
    async def start(self) -> None:
        """Open sessions, fetch credentials or WSDLs; fail fast on bad configuration."""

    @abstractmethod
    async def deliver(self, delivery: Delivery) -> Receipt:
        """Hand one referral to the agency. Raise RetryableError or PermanentError."""

    @abstractmethod
    async def stop(self) -> None:
        """Release sessions; called once, after the last deliver has returned."""


@dataclass(frozen=True)
class StatusReport:
    """An agency's current answer about one referral, read by polling."""

    status: EnrollmentStatus
    reference: str


class PollsStatus(ABC):
    """Mixin for connectors whose agency cannot push status: the hub calls ``status_of``
    for each open referral on an interval and publishes what changed."""

    @abstractmethod
    async def status_of(self, reference: str) -> StatusReport | None:
        """The agency's current status for its ``reference``; None if it does not know it.
        Raise RetryableError or PermanentError like ``deliver``."""


@dataclass(frozen=True)
class Withdrawal:
    """One agency told that a referral it was sent (or is about to be sent) is withdrawn,
    whole or some of its programmes. Ids and codes only.

    ``idempotency_key`` is derived from (withdrawal event id, agency): a retried, re-driven
    or replayed withdrawal carries the same one. ``delivery_key`` is the idempotency key of
    the delivery it withdraws, how the agency finds the referral: the hub may not know the
    agency's reference yet, and the agency may not have the referral yet (the withdrawal
    overtook it)."""

    event_id: str
    referral_id: str
    agency: str
    idempotency_key: str
    delivery_key: str
    reason: str
    """``consent_withdrawn``, ``beneficiary_request``, ``duplicate`` or ``error``."""
    programmes: tuple[str, ...]
    """The withdrawn programmes in the agency's own codes (its mapping's code list)."""
    whole: bool
    """Nothing of the referral is left for this agency: its whole case ends."""
    withdrawn_at: datetime


class Withdraws(ABC):
    """Mixin for connectors whose agency can be told of a withdrawal (``supports`` has
    ``"withdrawal"`` in the family's spec)."""

    @abstractmethod
    async def withdraw(self, withdrawal: Withdrawal) -> Receipt:
        """Tell the agency; idempotent per ``withdrawal.idempotency_key`` (a repeat answers
        ``duplicate=True``). An agency that does not know ``delivery_key`` yet must still
        take the withdrawal and remember it, so that a later delivery under that key is
        never activated: the answer's ``reference`` is then None. Raise RetryableError or
        PermanentError like ``deliver``."""
