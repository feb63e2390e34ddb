"""Shared request dependencies: the hub's state and the authenticated principal."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from hub.auth import Principal, authenticate
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
    token_cache_s: float = 30.0
    _principals: dict[str, tuple[Principal, float]] = field(default_factory=dict)

    async def principal_for(self, token: str) -> Principal | None:
        """Token → principal, cached briefly so a polling client costs no query per call;
        a revoked token stops working within ``token_cache_s``."""
        now = time.monotonic()
        cached = self._principals.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await authenticate(self.db, token)
        if principal is not None:
            if len(self._principals) > 10_000:
                self._principals.clear()
            self._principals[token] = (principal, now + self.token_cache_s)
        return principal


def get_state(request: Request) -> HubState:
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
            "unknown or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return principal


def require_operator(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if principal.kind != "operator":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "operator access only")
    return principal


StateDep = Annotated[HubState, Depends(get_state)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
OperatorDep = Annotated[Principal, Depends(require_operator)]
