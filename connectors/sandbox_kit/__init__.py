"""Pieces shared by every sandbox agency (development only; not in the production wheel).

The sandboxes stand in for real agencies in tests, the demo and benchmarks, so each must
behave like one: remember what it received (also across restarts), enforce its own
idempotency, fail on demand and report status changes back to the hub. Keeping those
behaviours here means the family sandboxes only differ where the agencies do.

- ``ledger``: what was received, idempotency by key
- ``faults``: fault knobs and the ``/_sandbox/*`` routes
- ``push``: the journalled status pusher
- ``app``: a pushing sandbox's app, wired once
"""

from connectors.sandbox_kit.app import SandboxApp, sandbox_app
from connectors.sandbox_kit.faults import FaultKnobs, Faults, add_sandbox_routes, apply_faults
from connectors.sandbox_kit.ledger import (
    IdempotencyKeyReused,
    ReceivedRecord,
    SandboxLedger,
    utc_now,
)
from connectors.sandbox_kit.push import PushJournal, StatusPusher

__all__ = [
    "FaultKnobs",
    "Faults",
    "IdempotencyKeyReused",
    "PushJournal",
    "ReceivedRecord",
    "SandboxApp",
    "SandboxLedger",
    "StatusPusher",
    "add_sandbox_routes",
    "apply_faults",
    "sandbox_app",
    "utc_now",
]
