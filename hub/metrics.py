"""Prometheus metrics with an injected registry and few, fixed labels.

Labels are agency ids, outcomes and error classes: never a person, never a referral id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class HubMetrics:
    """Every metric the hub exposes, created once per registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "diasyndesi_deliveries",
            "Delivery outcomes recorded by the projector, per connector and outcome.",
            ["connector", "outcome"],
            registry=r,
        )
        self.withdrawals = Counter(
            "diasyndesi_withdrawals",
            "Withdrawal outcomes recorded by the projector, per connector and outcome "
            "(withdrawn, retrying, dead_lettered).",
            ["connector", "outcome"],
            registry=r,
        )
        self.delivery_attempts = Counter(
            "diasyndesi_delivery_attempts",
            "Calls made to agencies, per connector (from outcome events).",
            ["connector"],
            registry=r,
        )
        self.delivery_retries = Counter(
            "diasyndesi_delivery_retries",
            "In-process retries by the connector runner, per connector and error class.",
            ["connector", "error_class"],
            registry=r,
        )
        self.rerouted = Counter(
            "diasyndesi_rerouted",
            "Failed deliveries sent on to a retry topic or the dead-letter topic.",
            ["connector", "destination"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "diasyndesi_circuit_state",
            "Circuit breaker per connector: 0 closed, 1 open, 2 half-open.",
            ["connector"],
            registry=r,
        )
        self.circuit_opened = Counter(
            "diasyndesi_circuit_opened",
            "Times a connector's circuit breaker opened.",
            ["connector"],
            registry=r,
        )
        self.redriven_stale = Counter(
            "diasyndesi_redriven_stale",
            "Referral events re-sent because a delivery had no outcome for too long.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "diasyndesi_consumer_lag",
            "Records waiting for a connector on partitions it may consume now.",
            ["connector"],
            registry=r,
        )
        self.consumer_stalled = Gauge(
            "diasyndesi_consumer_stalled",
            "1 when a connector has lag but has made no progress for its stall window.",
            ["connector"],
            registry=r,
        )
        self.poison_records = Counter(
            "diasyndesi_poison_records",
            "Records skipped because they are not a CloudEvent the hub understands.",
            ["consumer"],
            registry=r,
        )
        self.submit_to_delivered = Histogram(
            "diasyndesi_submit_to_delivered_seconds",
            "Time from a referral's acceptance to its first successful delivery, per connector.",
            ["connector"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_write_wait = Histogram(
            "diasyndesi_db_write_wait_seconds",
            "SQLite: how long a write transaction waited for this process's write turn (the "
            "writers take turns); the wait is part of every write's latency.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "diasyndesi_outbox_backlog",
            "Outbox records not yet acknowledged by the broker.",
            registry=r,
        )
        self.relay_published = Counter(
            "diasyndesi_relay_published",
            "Outbox records the relay handed to the broker, per topic.",
            ["topic"],
            registry=r,
        )
        self.referrals_accepted = Counter(
            "diasyndesi_referrals_accepted",
            "Referrals accepted by the intake API (new, not idempotent repeats).",
            registry=r,
        )
        self.intake_rejected = Counter(
            "diasyndesi_intake_rejected",
            "Referral submissions refused, per reason.",
            ["reason"],
            registry=r,
        )
        self.inbound_status_refused = Counter(
            "diasyndesi_inbound_status_refused",
            "Agency status calls refused or absorbed, per agency and reason.",
            ["connector", "reason"],
            registry=r,
        )
        self.status_polls = Counter(
            "diasyndesi_status_polls",
            "Status queries to agencies that cannot push, per agency and result.",
            ["connector", "result"],
            registry=r,
        )
        self.status_updates = Counter(
            "diasyndesi_status_updates",
            "Enrollment status changes applied to the read model, per agency and status.",
            ["connector", "status"],
            registry=r,
        )
        self.task_restarts = Counter(
            "diasyndesi_task_restarts",
            "Long-running tasks of this process restarted after ending unexpectedly, per task "
            "(relay, projector, connector:<agency>, poller:<agency>, ...).",
            ["task"],
            registry=r,
        )
        self.task_up = Gauge(
            "diasyndesi_task_up",
            "1 while a supervised task of this process runs, 0 while it waits to be restarted.",
            ["task"],
            registry=r,
        )
        self.record_errors = Counter(
            "diasyndesi_record_errors",
            "Records whose handling raised an unexpected error (dead-lettered by a connector, "
            "skipped by the projector), per consumer and error class.",
            ["consumer", "error_class"],
            registry=r,
        )
        self.information_requests = Counter(
            "diasyndesi_information_requests",
            "Information requests (the 10-working-day duty) recorded and answered, per event "
            "(recorded, answered_on_time, answered_late).",
            ["event"],
            registry=r,
        )
        self.information_requests_overdue = Gauge(
            "diasyndesi_information_requests_overdue",
            "Open information requests past the end of their due day (Athens time), per "
            "centre; read from the database when `serve`'s /metrics is scraped.",
            ["centre"],
            registry=r,
        )
        self.sse_streams = Gauge(
            "diasyndesi_sse_streams",
            "Centres' event streams open on this process",
            registry=r,
        )
        self.centre_events_overdue = Counter(
            "diasyndesi_information_requests_overdue_told",
            "Information requests a centre was told became overdue",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "diasyndesi_webhook_deliveries",
            "Webhook calls to centres by outcome (delivered, retrying, dead_lettered)",
            ["outcome"],
            registry=r,
        )
