"""The app of a pushing sandbox agency: ledger, fault knobs, status pusher and the
``/_sandbox/*`` routes, wired once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from fastapi import FastAPI

from connectors.sandbox_kit.faults import Faults, add_sandbox_routes
from connectors.sandbox_kit.ledger import SandboxLedger
from connectors.sandbox_kit.push import StatusPusher

log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- app


@dataclass
class SandboxApp:
    """A pushing agency's app with its ledger, fault knobs and (journalled) status pusher."""

    app: FastAPI
    ledger: SandboxLedger
    faults: Faults
    pusher: StatusPusher


def sandbox_app(
    title: str,
    agency: str,
    *,
    hub_url: str | None,
    hub_token: str | None,
    state_file: Path | None,
) -> SandboxApp:
    """The set-up every pushing REST sandbox shares: the ledger in ``state_file``, the push
    journal next to it, the pusher opened and closed with the app, ``app.state`` exposing
    all three to tests, and the ``/_sandbox/*`` routes."""
    ledger = SandboxLedger(state_file)
    faults = Faults()
    pusher = StatusPusher(
        agency,
        hub_url,
        hub_token,
        journal=state_file.with_suffix(".pushes.jsonl") if state_file else None,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pusher.start()
        try:
            yield
        finally:
            await pusher.close()

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.ledger = ledger
    app.state.faults = faults
    app.state.pusher = pusher
    add_sandbox_routes(app, ledger, faults)
    return SandboxApp(app, ledger, faults, pusher)
