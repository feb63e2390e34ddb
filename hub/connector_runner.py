"""Runs one agency connector as a Kafka application: one consumer group per agency, reading
``kk.referrals.v1`` and the agency's own retry topics.

For each ``referral.submitted`` record routed to the agency: map (allow-list), try a few
times in process (tenacity, exponential backoff with jitter, Retry-After honoured; a
Retry-After longer than the in-process backoff cap ends the quick attempts), and then
either record success, or re-publish the record to the next retry topic, or to the
dead-letter topic (permanent failure, or retries exhausted). The outcome is published on
``kk.deliveries.v1`` with acks=all and only then is the offset committed. A crash anywhere
before the commit means the record is delivered again with the same idempotency key, which
the agency recognises: at-least-once on the wire, exactly-once in effect.

Any other error while handling one record (a mapping that cannot build the payload, an
agency receipt that fails validation, a bug) dead-letters that record at once with its
error class (``mapping_error``, ``invalid_receipt``, ``unexpected:<ExceptionType>``; never the
exception's message, which may quote personal data) and records a failed outcome: one
record never stops a partition or the consumer.

The Kafka loop (fetch, hold retry partitions until due, pause while the circuit breaker is
open, commit) is ``hub/connector_loop.py``. Neither ever touches another agency's group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRebalanceListener
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from diasyndesi_sdk.connector import Connector, Delivery, Receipt, idempotency_key
from hub.breaker import BreakerState, CircuitBreaker
from hub.bus import Publisher
from hub.errors import BrokerError, DeliveryError, PermanentError, RetryableError
from hub.events import Event, OutgoingRecord, encode
from hub.logs import get_logger
from hub.mapping import Mapping
from hub.metrics import HubMetrics
from hub.retry_topics import H_REDRIVE_FOR, RetryState, dlq_topic, reroute, retry_topic
from hub.settings import RetrySettings
from hub.supervisor import where
from schemas.events import TOPIC_DELIVERIES, DeliveryOutcome, ReferralSubmitted

log = get_logger(__name__)

# An agency's Retry-After is honoured in full up to this bound (the last default retry-topic
# delay). Why a bound at all: the hint is the agency's word, and a broken or hostile one (an
# HTTP date years ahead, "Retry-After: 99999999") must not park a referral out of sight;
# and a record waiting on a retry partition holds the records behind it on that partition
# (the partition is paused until its head is due), so the bound is also the longest that
# other referrals of the same agency can be held back by one such hint.
RETRY_AFTER_CAP_S = 3600.0


def retry_after_hint(state: RetryCallState) -> float | None:
    """The agency's Retry-After carried by the last failed attempt, if any."""
    exc = state.outcome.exception() if state.outcome else None
    return exc.retry_after_s if isinstance(exc, DeliveryError) else None


class stop_when_hint_over(stop_base):  # lower case, like tenacity's own stops
    """Stop the quick attempts when the agency asks for a longer wait than they allow."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        hint = retry_after_hint(retry_state)
        return hint is not None and hint > self.max_s


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
    return data.referral.id if isinstance(data, ReferralSubmitted) else incoming.event.subject or ""


def validation_summary(exc: ValidationError) -> str:
    """Which fields failed and how (``reference: string_too_long``), never the input:
    ``str()`` of a pydantic error quotes the offending value, which may be personal data."""
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['type']}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return "; ".join(parts)[:200]


class DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another member, wait (bounded) for the batch in flight to
    finish and be committed, so the new owner does not redo work already done."""

    def __init__(self, runner: ConnectorRunner, timeout_s: float = 30.0) -> None:
        self.runner = runner
        self.timeout_s = timeout_s

    async def on_partitions_revoked(self, revoked: Any) -> None:
        try:
            await asyncio.wait_for(self.runner.idle.wait(), self.timeout_s)
        except TimeoutError:
            log.warning(
                "rebalance before the batch finished; it will be redelivered",
                agency=self.runner.agency,
            )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", agency=self.runner.agency, count=len(assigned))


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
    ) -> None:
        self.connector = connector
        self.agency = connector.agency
        self.mapping = mapping
        self.publisher = publisher
        self.retry = retry
        self.metrics = metrics
        self._limit = asyncio.Semaphore(concurrency)
        self._backoff = wait_exponential_jitter(
            multiplier=retry.initial_s, max=retry.max_s, jitter=retry.jitter_s
        )
        self._sleep = sleep
        self._clock = clock
        self._stopping = asyncio.Event()
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
        if not isinstance(event.data, ReferralSubmitted):
            return None  # withdrawals and other types are not this runner's job yet
        referral = event.data.referral
        if self.agency not in referral.routed or not self._still_owed(incoming):
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
            result, used = await self._attempt(delivery)
        attempts = incoming.retry.attempts + used
        if isinstance(result, Receipt):
            self.breaker.success()  # the agency answered; what it answered is another matter
            try:
                outcome = self._outcome(incoming, attempts, receipt=result)
            except ValidationError as exc:
                return await self.dead_letter(
                    incoming,
                    "invalid_receipt",
                    f"agency receipt invalid: {validation_summary(exc)}",
                    attempts=attempts,
                )
        else:
            if isinstance(result, RetryableError):
                self.breaker.failure()
            outcome = await self._reroute(incoming, attempts, result)
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
            if not isinstance(incoming.event.data, ReferralSubmitted):
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
        outcome = await self._reroute(incoming, tried, error)
        await self._record(outcome)
        return outcome

    def _still_owed(self, incoming: Incoming) -> bool:
        """False for a re-driven record naming other agencies only (this one has it)."""
        for name, value in incoming.headers:
            if name == H_REDRIVE_FOR:
                return self.agency in value.decode(errors="replace").split(",")
        return True

    async def _reroute(
        self, incoming: Incoming, attempts: int, error: DeliveryError
    ) -> DeliveryOutcome:
        """Send a failed delivery on to the next retry topic or to the dead-letter topic."""
        now = self._clock()
        level = incoming.retry.level + 1
        delays = self.retry.topic_delays_s
        dead = isinstance(error, PermanentError) or level > len(delays)
        if dead:
            topic, due = dlq_topic(self.agency), now
        else:
            delay = max(delays[level - 1], min(error.retry_after_s or 0, RETRY_AFTER_CAP_S))
            topic, due = retry_topic(self.agency, level), now + delay
        record = reroute(
            incoming.headers,
            incoming.key,
            incoming.value,
            topic=topic,
            level=level,
            attempts=attempts,
            first_failure=incoming.retry.first_failure or datetime.now(UTC),
            due=due,
            origin=incoming.retry.origin or incoming.origin,
            error_class=error.error_class,
            error=str(error),
        )
        await self._publish_until_acked(record)
        self.metrics.rerouted.labels(self.agency, "dlq" if dead else f"retry_{level}").inc()
        log.warning(
            "delivery failed; dead-lettered" if dead else "delivery failed; scheduled retry",
            agency=self.agency,
            referral_id=_referral_id(incoming),
            error_class=error.error_class,
            attempts=attempts,
            topic=topic,
        )
        return self._outcome(incoming, attempts, error=error, dead_lettered=dead)

    async def _attempt(self, delivery: Delivery) -> tuple[Receipt | DeliveryError, int]:
        """The quick in-process attempts: exponential backoff with jitter, honouring an
        agency's Retry-After when it is longer. A Retry-After beyond ``retry.max_s`` is not
        slept through here (it would hold a concurrency slot and the whole batch's commit):
        the attempts stop and ``_reroute`` schedules the record on a retry topic no earlier
        than the hint. Returns the receipt or the last classified error, and how many calls
        were made."""
        policy = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.retry.attempts) | stop_when_hint_over(self.retry.max_s),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
            before_sleep=self._count_retry,
        )
        used = 0
        try:
            async for attempt in policy:
                with attempt:
                    used = attempt.retry_state.attempt_number
                    receipt = await self.connector.deliver(delivery)
        except DeliveryError as exc:
            return exc, used
        except Exception as exc:  # a connector broke its contract: retry, and say so
            log.error(
                "connector raised a foreign error", agency=self.agency, error=type(exc).__name__
            )
            return RetryableError("connector error", error_class="connector_bug"), used
        return receipt, used

    def _wait(self, state: RetryCallState) -> float:
        # Never shorter than the agency's hint; a hint beyond max_s stops the attempts
        # (``stop_when_hint_over``), so nothing longer than max_s is slept here.
        base = self._backoff(state)
        hint = retry_after_hint(state)
        return max(base, hint) if hint else base

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        error_class = exc.error_class if isinstance(exc, DeliveryError) else "unknown"
        self.metrics.delivery_retries.labels(self.agency, error_class).inc()

    def _outcome(
        self,
        incoming: Incoming,
        attempts: int,
        *,
        receipt: Receipt | None = None,
        error: DeliveryError | None = None,
        dead_lettered: bool = False,
    ) -> DeliveryOutcome:
        return DeliveryOutcome(
            referral_id=_referral_id(incoming),
            agency=self.agency,
            succeeded=error is None,
            attempts=max(attempts, 1),
            reference=receipt.reference if receipt else None,
            error_class=error.error_class if error else None,
            error_message=str(error)[:400] if error else None,
            permanent=isinstance(error, PermanentError),
            dead_lettered=dead_lettered,
            occurred_at=datetime.now(UTC),
            submitted_event_id=incoming.event.id,
        )

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
