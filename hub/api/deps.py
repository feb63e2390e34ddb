"""Shared request dependencies: the hub's state and the authenticated principal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from hub.auth import Principal, authenticate
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
    bootstrap: str
    wake_relay: Callable[[], None] = field(default=lambda: None)


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
    principal = await authenticate(state.db, token.strip())
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
