"""A centre's event stream over Server-Sent Events (``GET /v1/centres/{centre}/events``).

The stream reads ``centre_events`` (``hub/centre_events.py``), so any ``serve`` on the
database serves any centre's stream, whichever process's projector recorded the events: it
polls every ``PUSH__SSE_POLL_S`` and writes a comment line every ``PUSH__SSE_HEARTBEAT_S``
so proxies keep an idle stream open. Each message's ``id:`` is the event's row id, a
durable cursor: a client that reconnects with ``Last-Event-ID`` (or ``?after=`` where it
cannot set headers) gets exactly the events after it. A new stream without either starts
at the centre's newest event (``after=0`` replays everything kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from hub.api.deps import HubState, PrincipalDep, StateDep
from hub.auth import Principal
from hub.centre_events import events_after, last_event_id
from hub.db import CentreEventRow
from hub.logs import get_logger

log = get_logger(__name__)
router = APIRouter(tags=["push to centres"])

RETRY_MS = 3000
"""What an EventSource waits before reconnecting (the ``retry:`` field)."""


def check_centre(state: HubState, principal: Principal, centre: str) -> None:
    """That centre's own token or an operator (403), for a centre the registry knows (404)."""
    if principal.kind == "agency" or (principal.kind == "centre" and principal.id != centre):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "that centre or an operator only")
    if centre not in state.registry.centres:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such centre")


def sse_message(row: CentreEventRow) -> bytes:
    data = json.dumps(row.data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {row.id}\nevent: {row.type}\ndata: {data}\n\n".encode()


@router.get(
    "/v1/centres/{centre}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
        401: {},
        403: {},
        404: {},
        422: {},
    },
)
async def centre_events(
    centre: str,
    state: StateDep,
    principal: PrincipalDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> StreamingResponse:
    """The centre's events as they are recorded: ``referral.delivered``,
    ``referral.status_changed``, ``referral.dead_lettered``, ``referral.withdrawn``,
    ``referral.received``, ``information_request.overdue``; each ``data:`` a JSON object
    with ``referral_id`` (ids, codes and times only). Resume with ``Last-Event-ID`` (or
    ``after``)."""
    check_centre(state, principal, centre)
    cursor = after
    if last_event_id_header is not None and last_event_id_header.strip():
        raw = last_event_id_header.strip()
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                [
                    {
                        "loc": ["header", "Last-Event-ID"],
                        "field": "Last-Event-ID",
                        "msg": "not an event id of this stream",
                        "type": "invalid_cursor",
                    }
                ],
            )
        cursor = int(raw)
    if cursor is None:
        async with state.db.sessions() as session:
            cursor = await last_event_id(session, centre)
    state.metrics.sse_streams.inc()
    log.info("event stream opened", centre=centre, after=cursor)
    return StreamingResponse(
        _stream(state, centre, cursor),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(state: HubState, centre: str, cursor: int) -> AsyncIterator[bytes]:
    """Until the client goes (the server then cancels this) or the process stops."""
    push = state.settings.push
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    try:
        yield f"retry: {RETRY_MS}\n: stream of {centre} after {cursor}\n\n".encode()
        while not state.closing.is_set():
            try:
                async with state.db.sessions() as session:
                    rows = await events_after(session, centre, cursor)
            except (SQLAlchemyError, OSError) as exc:
                # The client reconnects with Last-Event-ID once the database is back.
                log.warning("event stream ended: database unavailable", error=type(exc).__name__)
                return
            for row in rows:
                yield sse_message(row)
                cursor = row.id
            if rows:
                quiet_since = loop.time()
                continue
            if loop.time() - quiet_since >= push.sse_heartbeat_s:
                yield b": heartbeat\n\n"
                quiet_since = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.closing.wait(), push.sse_poll_s)
    finally:
        state.metrics.sse_streams.dec()
