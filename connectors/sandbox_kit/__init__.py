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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are, for type checkers; at run time see __getattr__
    from connectors.sandbox_kit.app import (
        NonEmptySecret,
        PushingSandboxConfig,
        SandboxApp,
        announce_withdrawal,
        error_response,
        quiet_fastapi,
        record_withdrawal,
        request_object,
        sandbox_app,
        withdrawal_fields,
    )
    from connectors.sandbox_kit.faults import (
        FaultKnobs,
        Faults,
        add_sandbox_routes,
        apply_faults,
    )
    from connectors.sandbox_kit.ledger import (
        IdempotencyKeyReused,
        ReceivedRecord,
        SandboxLedger,
        WithdrawalRecord,
        utc_now,
    )
    from connectors.sandbox_kit.push import PushJournal, StatusPusher

_HOMES = {
    "PushingSandboxConfig": "app",
    "NonEmptySecret": "app",
    "error_response": "app",
    "request_object": "app",
    "SandboxApp": "app",
    "quiet_fastapi": "app",
    "record_withdrawal": "app",
    "sandbox_app": "app",
    "FaultKnobs": "faults",
    "Faults": "faults",
    "add_sandbox_routes": "faults",
    "apply_faults": "faults",
    "IdempotencyKeyReused": "ledger",
    "ReceivedRecord": "ledger",
    "SandboxLedger": "ledger",
    "utc_now": "ledger",
    "WithdrawalRecord": "ledger",
    "withdrawal_fields": "app",
    "announce_withdrawal": "app",
    "PushJournal": "push",
    "StatusPusher": "push",
}


def __getattr__(name: str) -> Any:
    """Imported on first use (PEP 562): ``up`` reads ``sandbox_kit.certs`` to make test
    certificates and must not load the web framework the apps need."""
    if name not in _HOMES:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"connectors.sandbox_kit.{_HOMES[name]}"), name)


__all__ = [
    "FaultKnobs",
    "Faults",
    "IdempotencyKeyReused",
    "NonEmptySecret",
    "PushJournal",
    "PushingSandboxConfig",
    "ReceivedRecord",
    "SandboxApp",
    "SandboxLedger",
    "StatusPusher",
    "WithdrawalRecord",
    "add_sandbox_routes",
    "announce_withdrawal",
    "apply_faults",
    "error_response",
    "quiet_fastapi",
    "record_withdrawal",
    "request_object",
    "sandbox_app",
    "utc_now",
    "withdrawal_fields",
]
