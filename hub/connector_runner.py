"""Runs one agency connector as a Kafka application: one consumer group per agency, reading
``kk.referrals.v1`` and the agency's own retry topics.

For each ``referral.submitted`` record routed to the agency: map (allow-list), try a few
times in process (exponential backoff with jitter, Retry-After honoured; a Retry-After
longer than the in-process backoff cap ends the quick attempts), and then either record
success, or re-publish the record to the next retry topic, or to the dead-letter topic
(permanent failure, or retries exhausted). What follows each call is the pure decision of
``RetryPolicy`` (``hub/retry_policy.py``); the runner carries it out. The outcome is
published on ``kk.deliveries.v1`` with acks=all and only then is the offset committed. A
crash anywhere before the commit means the record is delivered again with the same
idempotency key, which the agency recognises: at-least-once on the wire, exactly-once in
effect.

A ``referral.withdrawn`` record naming the agency is carried out the same way: the
connector's ``withdraw`` (``Withdraws``), the same quick calls, retry topics and dead
letters, an idempotency key derived from (withdrawal event id, agency), and a
``WithdrawalOutcome``. A withdrawal that ends the agency's whole referral supersedes its
delivery: a delivery of that referral read afterwards (from a retry topic, or re-driven)
is not made (docs/decisions/0019-withdrawal.md; the agency also keeps a withdrawal that
overtakes the referral, so a delivery another member makes is never active).

Any other error while handling one record (a mapping that cannot build the payload, an
agency receipt that fails validation, a bug) dead-letters that record at once with its
error class (``mapping_error``, ``invalid_receipt``, ``unexpected:<ExceptionType>``; never the
exception's message, which may quote personal data) and records a failed outcome: one
record never stops a partition or the consumer.

The Kafka loop (fetch, hold retry partitions until due, pause while the circuit breaker is
open, commit, drain on a rebalance) is ``hub/connector_loop.py``; the runner does not know
Kafka's consumer at all. Neither ever touches another agency's group.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from diasyndesi_sdk.connector import (
    Connector,
    Delivery,
    Receipt,
    Withdrawal,
    Withdraws,
    idempotency_key,
)
from hub.breaker import BreakerState, CircuitBreaker
from hub.bus import Publisher
from hub.errors import BrokerError, DeliveryError, PermanentError, RetryableError
from hub.events import Event, OutgoingRecord, encode
from hub.logs import get_logger
from hub.mapping import Mapping
from hub.metrics import HubMetrics
from hub.retry_policy import CallAgain, DeadLetter, Delivered, Reroute, RetryPolicy
from hub.retry_topics import H_REDRIVE_FOR, RetryState, dlq_topic, reroute, retry_topic
from hub.settings import RetrySettings
from hub.supervisor import where
from schemas.events import (
    TOPIC_DELIVERIES,
    DeliveryOutcome,
    ReferralSubmitted,
    ReferralWithdrawn,
    WithdrawalOutcome,
)

log = get_logger(__name__)

SUPERSEDED_REMEMBERED = 100_000
"""Delivery keys of withdrawn referrals a runner remembers (the oldest forgotten first);
past that, the agency's own record of the withdrawal still stops the referral."""


@dataclass(frozen=True)
class Incoming:
    """One consumed record: the decoded event plus what is needed to re-route it."""

    event: Event
    headers: list[tuple[str, bytes]]
    key: bytes | None
    value: bytes | None
    origin: str
    retry: RetryState


def _referral_id(incoming: Incoming) -> str:
    """The referral a record is about (its Kafka key says the same; the event is the source)."""
    data = incoming.event.data
    if isinstance(data, ReferralSubmitted):
        return data.referral.id
    if isinstance(data, ReferralWithdrawn):
        return data.referral_id
    return incoming.event.subject or ""


def _ours(incoming: Incoming) -> bool:
    """A record this runner acts on (and so dead-letters if handling it fails)."""
    return isinstance(incoming.event.data, ReferralSubmitted | ReferralWithdrawn)


def validation_summary(exc: ValidationError) -> str:
    """Which fields failed and how (``reference: string_too_long``), never the input:
    ``str()`` of a pydantic error quotes the offending value, which may be personal data."""
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['type']}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return "; ".join(parts)[:200]


class ConnectorRunner:
    """The hub side of one connector: mapping, retries, dead letters, outcomes, offsets."""

    def __init__(
        self,
        connector: Connector,
        mapping: Mapping,
        publisher: Publisher,
        retry: RetrySettings,
        metrics: HubMetrics,
        *,
        concurrency: int = 32,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """``sleep``, ``clock`` and ``jitter`` (a draw from [0, 1) for the backoff) are
        injectable for tests."""
        self.connector = connector
        self.agency = connector.agency
        self.mapping = mapping
        self.publisher = publisher
        self.retry = retry
        self.policy = RetryPolicy.from_settings(retry)
        self.metrics = metrics
        self._limit = asyncio.Semaphore(concurrency)
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._stopping = asyncio.Event()
        self._superseded: OrderedDict[str, None] = OrderedDict()  # withdrawn delivery keys
        self.idle = asyncio.Event()  # clear while a batch is in flight (DrainOnRevoke)
        self.idle.set()
        self.breaker = CircuitBreaker(
            retry.breaker_threshold, retry.breaker_cooldown_s, on_change=self._breaker_changed
        )
        metrics.circuit_state.labels(self.agency).set(BreakerState.CLOSED)

    @property
    def topics(self) -> list[str]:
        """Retry topics this runner consumes (besides kk.referrals.v1)."""
        return [retry_topic(self.agency, n) for n in range(1, len(self.retry.topic_delays_s) + 1)]

    def _breaker_changed(self, state: BreakerState) -> None:
        self.metrics.circuit_state.labels(self.agency).set(state)
        if state == BreakerState.OPEN:
            self.metrics.circuit_opened.labels(self.agency).inc()
        log.warning("circuit breaker", agency=self.agency, state=state.name.lower())

    # -- one record -------------------------------------------------------------------------

    async def handle(self, incoming: Incoming) -> DeliveryOutcome | None:
        """Deliver one event if it is for this agency; return the recorded outcome.

        A mapping that cannot build the payload, or an agency receipt that is not valid
        (e.g. a reference longer than the canonical 64 characters), dead-letters the record
        with ``mapping_error`` or ``invalid_receipt``; see ``handle_safely`` for the rest."""
        event = incoming.event
        if isinstance(event.data, ReferralWithdrawn):
            return await self._handle_withdrawal(incoming, event.data)
        if not isinstance(event.data, ReferralSubmitted):
            return None
        referral = event.data.referral
        if self.agency not in referral.routed or not self._still_owed(incoming):
            return None
        if idempotency_key(event.id, self.agency) in self._superseded:
            log.info(
                "delivery superseded by a withdrawal; not made",
                agency=self.agency,
                referral_id=referral.id,
            )
            return None
        try:
            payload = self.mapping.apply(referral.model_dump(mode="json"))
        except Exception as exc:  # the message may quote the value it choked on: type only
            return await self.dead_letter(
                incoming, "mapping_error", f"mapping failed: {type(exc).__name__}"
            )
        delivery = Delivery(
            event_id=event.id,
            referral_id=referral.id,
            agency=self.agency,
            idempotency_key=idempotency_key(event.id, self.agency),
            payload=payload,
        )
        async with self._limit:
            decision, receipt = await self._call(
                lambda: self.connector.deliver(delivery), incoming.retry
            )
        return await self._conclude(incoming, decision, receipt)

    async def _handle_withdrawal(
        self, incoming: Incoming, data: ReferralWithdrawn
    ) -> DeliveryOutcome | None:
        """Tell the agency of a withdrawal naming it, through the same retries."""
        if self.agency not in data.agencies or not self._still_owed(incoming):
            return None
        delivery_key = idempotency_key(data.submitted_event_id, self.agency)
        whole = self.agency in data.complete_for
        if whole:
            self._superseded[delivery_key] = None
            self._superseded.move_to_end(delivery_key)
            while len(self._superseded) > SUPERSEDED_REMEMBERED:
                self._superseded.popitem(last=False)
        connector = self.connector
        if not isinstance(connector, Withdraws):
            return await self.dead_letter(
                incoming, "withdrawal_unsupported", "the agency's family cannot withdraw"
            )
        withdrawal = Withdrawal(
            event_id=incoming.event.id,
            referral_id=data.referral_id,
            agency=self.agency,
            idempotency_key=idempotency_key(incoming.event.id, self.agency),
            delivery_key=delivery_key,
            reason=data.reason.value,
            programmes=tuple(self.mapping.programme_codes([p.value for p in data.programmes])),
            whole=whole,
            withdrawn_at=data.withdrawn_at,
        )
        async with self._limit:
            decision, receipt = await self._call(
                lambda: connector.withdraw(withdrawal), incoming.retry
            )
        return await self._conclude(incoming, decision, receipt)

    async def _conclude(
        self,
        incoming: Incoming,
        decision: Delivered | Reroute | DeadLetter,
        receipt: Receipt | None,
    ) -> DeliveryOutcome:
        """Record the agency's answer, or send the record on to a retry or dead-letter topic."""
        if isinstance(decision, Delivered):
            try:  # a connector that returned no Receipt raises here, for handle_safely
                outcome = self._outcome(incoming, decision.attempts, receipt=receipt)
            except ValidationError as exc:
                self.breaker.success()  # the agency answered; what it answered is another matter
                return await self.dead_letter(
                    incoming,
                    "invalid_receipt",
                    f"agency receipt invalid: {validation_summary(exc)}",
                    attempts=decision.attempts,
                )
            self.breaker.success()
        else:
            if isinstance(decision.error, RetryableError):
                self.breaker.failure()
            outcome = await self._reroute(incoming, decision)
        await self._record(outcome)
        return outcome

    async def handle_safely(self, incoming: Incoming) -> DeliveryOutcome | None:
        """``handle``, with any unexpected error turned into a dead letter for this record
        (``unexpected:<ExceptionType>``), so one record never stops the partition or the
        consumer. Only a bus failure while stopping escapes: that record stays uncommitted
        and comes back to whoever owns the partition next."""
        try:
            return await self.handle(incoming)
        except BrokerError:
            raise
        except Exception as exc:
            error_class = f"unexpected:{type(exc).__name__}"[:100]
            log.error(
                "unexpected error while handling a record; dead-lettering it",
                agency=self.agency,
                event_id=incoming.event.id,
                error_class=error_class,
                where=where(exc),
            )
            if not _ours(incoming):
                self.metrics.record_errors.labels(self.agency, error_class).inc()
                return None  # nothing this runner would deliver: nothing to dead-letter
            return await self.dead_letter(
                incoming, error_class, f"unexpected {type(exc).__name__} in the hub"
            )

    async def dead_letter(
        self, incoming: Incoming, error_class: str, detail: str, *, attempts: int | None = None
    ) -> DeliveryOutcome:
        """Send this record to ``kk.dlq.<agency>`` at once and record a failed, permanent,
        dead-lettered outcome (so the read model shows ``dead_lettered``). ``detail`` must
        name classes and fields only, never values."""
        self.metrics.record_errors.labels(self.agency, error_class).inc()
        error = PermanentError(detail, error_class=error_class)
        tried = incoming.retry.attempts if attempts is None else attempts
        decision = self.policy.after_failure(incoming.retry, tried, error, self._clock())
        outcome = await self._reroute(incoming, decision)
        await self._record(outcome)
        return outcome

    def _still_owed(self, incoming: Incoming) -> bool:
        """False for a re-driven record naming other agencies only (this one has it)."""
        for name, value in incoming.headers:
            if name == H_REDRIVE_FOR:
                return self.agency in value.decode(errors="replace").split(",")
        return True

    async def _reroute(self, incoming: Incoming, decision: Reroute | DeadLetter) -> DeliveryOutcome:
        """Send a failed delivery on to the next retry topic or to the dead-letter topic."""
        dead = isinstance(decision, DeadLetter)
        topic = dlq_topic(self.agency) if dead else retry_topic(self.agency, decision.level)
        error = decision.error
        record = reroute(
            incoming.headers,
            incoming.key,
            incoming.value,
            topic=topic,
            level=decision.level,
            attempts=decision.attempts,
            first_failure=incoming.retry.first_failure or datetime.now(UTC),
            due=decision.due,
            origin=incoming.retry.origin or incoming.origin,
            error_class=error.error_class,
            error=str(error),
        )
        await self._publish_until_acked(record)
        label = "dlq" if dead else f"retry_{decision.level}"
        self.metrics.rerouted.labels(self.agency, label).inc()
        log.warning(
            "delivery failed; dead-lettered" if dead else "delivery failed; scheduled retry",
            agency=self.agency,
            referral_id=_referral_id(incoming),
            error_class=error.error_class,
            attempts=decision.attempts,
            topic=topic,
        )
        return self._outcome(incoming, decision.attempts, error=error, dead_lettered=dead)

    async def _call(
        self, call: Callable[[], Awaitable[Receipt]], record: RetryState
    ) -> tuple[Delivered | Reroute | DeadLetter, Receipt | None]:
        """The quick in-process calls (a delivery, or a withdrawal), each followed by the
        policy's decision: pause and call again, or stop. A Retry-After beyond
        ``retry.max_s`` is not slept through here (it would hold a concurrency slot and
        the whole batch's commit): the policy sends the record to a retry topic no
        earlier than the hint. Returns the final decision and the agency's answer, if it
        answered."""
        calls = 0
        while True:
            calls += 1
            failure: Exception | None = None
            receipt: Receipt | None = None
            try:
                receipt = await call()
            except DeliveryError as exc:
                failure = exc
            except Exception as exc:  # a connector broke its contract: retry later, and say so
                log.error(
                    "connector raised a foreign error", agency=self.agency, error=type(exc).__name__
                )
                failure = exc
            decision = self.policy.after_call(record, calls, failure, self._clock(), self._jitter())
            if not isinstance(decision, CallAgain):
                return decision, receipt
            self.metrics.delivery_retries.labels(self.agency, decision.error.error_class).inc()
            await self._sleep(decision.after_s)

    def _outcome(
        self,
        incoming: Incoming,
        attempts: int,
        *,
        receipt: Receipt | None = None,
        error: DeliveryError | None = None,
        dead_lettered: bool = False,
    ) -> DeliveryOutcome:
        fields = {
            "referral_id": _referral_id(incoming),
            "agency": self.agency,
            "succeeded": error is None,
            "attempts": max(attempts, 1),
            "reference": receipt.reference if receipt else None,
            "error_class": error.error_class if error else None,
            "error_message": str(error)[:400] if error else None,
            "permanent": isinstance(error, PermanentError),
            "dead_lettered": dead_lettered,
            "occurred_at": datetime.now(UTC),
        }
        data = incoming.event.data
        if isinstance(data, ReferralWithdrawn):
            return WithdrawalOutcome(
                **fields,
                submitted_event_id=data.submitted_event_id,
                withdrawal_id=incoming.event.id,
            )
        return DeliveryOutcome(**fields, submitted_event_id=incoming.event.id)

    async def _record(self, outcome: DeliveryOutcome) -> None:
        record = encode(TOPIC_DELIVERIES, outcome.event_type, outcome, key=outcome.referral_id)
        await self._publish_until_acked(record)

    async def _publish_until_acked(self, record: OutgoingRecord) -> None:
        """Keep trying until the broker takes the record (or we stop, leaving it uncommitted)."""
        pause = 0.2
        while True:
            try:
                await self.publisher.publish(record)
                return
            except BrokerError as exc:
                log.warning("record not published yet", agency=self.agency, error=str(exc))
                if await self._stopped_within(pause):
                    raise
                pause = min(pause * 2, 5.0)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    # -- for the Kafka loop (hub/connector_loop.py) ------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def now(self) -> float:
        """The clock retry due times are measured on (injectable for tests)."""
        return self._clock()

    async def stopped_within(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True as soon as the runner is told to stop."""
        return await self._stopped_within(seconds)

    def stop(self) -> None:
        self._stopping.set()
