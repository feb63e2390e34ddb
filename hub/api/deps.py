"""Shared request dependencies: the hub's state and the authenticated principal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from hub.api.status_writer import StatusWriter
from hub.api.token_cache import TokenCache
from hub.auth import Principal
from hub.bus import KafkaCluster
from hub.db import Database
from hub.metrics import HubMetrics
from hub.registry import Registry
from hub.settings import Settings


@dataclass
class HubState:
    """What the API needs from the running hub, passed in at app creation."""

    settings: Settings
    db: Database
    registry: Registry
    metrics: HubMetrics
    kafka: KafkaCluster
    wake_relay: Callable[[], None] = field(default=lambda: None)
    token_check_s: float = 0.5
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the process stops: open event streams end so the server can."""
    tokens: TokenCache = field(init=False)
    status_writer: StatusWriter = field(init=False)

    def __post_init__(self) -> None:
        self.status_writer = StatusWriter(self.db)
        self.tokens = TokenCache(
            self.db,
            allow_unexpiring=self.settings.environment == "development",
            check_every_s=self.token_check_s,
        )

    async def principal_for(self, token: str) -> Principal | None:
        """Token → principal without a query per request; a token revoked by any process
        stops working here within a second (``hub/api/token_cache.py``)."""
        return await self.tokens.principal_for(token)


async def get_state(request: Request) -> HubState:
    state: HubState = request.app.state.hub
    return state


async def get_principal(
    state: Annotated[HubState, Depends(get_state)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = await state.principal_for(token.strip())
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown, expired or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return principal


async def require_operator(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if principal.kind != "operator":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "operator access only")
    return principal


StateDep = Annotated[HubState, Depends(get_state)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
OperatorDep = Annotated[Principal, Depends(require_operator)]
