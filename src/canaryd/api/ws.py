"""WebSocket: the status object at once, then every event of the deployment in order, then a final status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from canaryd.api.deps import websocket_principal
from canaryd.api.frames import frame_writer, text_frame
from canaryd.engine.bus import BusMessage, encode
from canaryd.runtime import Runtime
from canaryd.services import live
from canaryd.services.errors import NotFound

router = APIRouter(prefix="/api/v1")

CLOSE_NORMAL = 1000
CLOSE_BAD_TOKEN = 4401
CLOSE_SCOPE = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4422

#: The protocol, as /docs, /redoc and docs/api.md show it.
PROTOCOL = """
### WebSocket: `GET /api/v1/deployments/{deployment_id}/ws`

A live view of one deployment (read scope). The token goes in the `Authorization: Bearer <token>` header,
or, where a client cannot set headers (a browser), in `?token=<token>`.

Query parameters: `after_seq=N` (optional) — also send every event with `seq > N` from the history before
the live ones; a client that lost its connection reconnects with the last `seq` it received and misses
nothing. Without it, only events after the connection are sent.

Messages (JSON text frames, server to client only; the server ignores what the client sends, and closes
with 1009 a message larger than `CANARYD_MAX_BODY_BYTES`):

1. `{"type": "status", ...}` — the status object (as `GET /api/v1/deployments/{id}`), at once;
2. `{"type": "event", "seq": N, ...}` — each event (as in `GET .../events`), in `seq` order, each exactly
   once, without a gap: the backlog from the database first, then live events; a gap in what the event bus
   delivered is filled from the database, a duplicate is dropped;
3. `{"type": "status", ...}` — the status again after each change (never an older one after a newer one);
4. `{"type": "status", "final": true, ...}` — when the deployment reaches `completed`, `rolled_back` or
   `failed`, after its last event; then the server closes with **1000**. A deployment that has already
   finished gets its status (and the backlog, with `after_seq`), the final status and the close at once.

Refusals: the server accepts the connection, then closes it with an application code and a reason:

| code | meaning |
|---|---|
| 4401 | missing or invalid token |
| 4403 | the token's scope does not include `read` |
| 4404 | no such deployment |
| 4422 | `after_seq` is not a non-negative integer |
| 1009 | a client message larger than `CANARYD_MAX_BODY_BYTES` |
"""


def _after_seq(websocket: WebSocket) -> int | str | None:
    raw = websocket.query_params.get("after_seq")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        return "after_seq must be a non-negative integer"
    return int(raw)


@router.websocket("/deployments/{deployment_id}/ws", name="deployment_ws")
async def deployment_ws(websocket: WebSocket, deployment_id: int) -> None:
    rt: Runtime = websocket.app.state.runtime
    await websocket.accept()
    principal = await websocket_principal(websocket)
    if principal is None:
        await websocket.close(code=CLOSE_BAD_TOKEN, reason="missing or invalid bearer token")
        return
    if not principal.allows("read"):
        await websocket.close(code=CLOSE_SCOPE, reason=f"scope {principal.scope!r} does not include 'read'")
        return
    after_seq = _after_seq(websocket)
    if isinstance(after_seq, str):
        await websocket.close(code=CLOSE_BAD_REQUEST, reason=after_seq)
        return
    write = frame_writer(websocket.scope)
    send_now = None if write is None else lambda batch: write(b"".join(map(_frame, batch)))
    stream = live.follow_batches(rt, deployment_id, after_seq, send_now=send_now)
    # Two tasks for the connection's life, not per message: sending ends when the stream does, receiving
    # when the client goes away; whichever ends first ends the other.
    sending = asyncio.create_task(_send(websocket, stream))
    receiving = asyncio.create_task(_drain(websocket))
    try:
        await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sending.cancel()
        receiving.cancel()
        sent, _ = await asyncio.gather(sending, receiving, return_exceptions=True)
        await stream.aclose()
    if isinstance(sent, Exception) and not isinstance(sent, (WebSocketDisconnect, RuntimeError)):
        raise sent  # a fault of ours (the client going away is not one)


def _text(message: dict[str, Any]) -> str:
    """A bus message's text was made once for every subscriber; the rest are this client's own."""
    return message.text if isinstance(message, BusMessage) else encode(message)


def _frame(message: dict[str, Any]) -> bytes:
    """A bus message's frame is made once for every subscriber."""
    return message.wire(text_frame) if isinstance(message, BusMessage) else text_frame(encode(message))


async def _send(websocket: WebSocket, stream: AsyncGenerator[list[dict[str, Any]]]) -> None:
    # Ready-made frames, all of a batch in one write, where the server offers it (api/frames.py); else
    # each message through ASGI.
    write = frame_writer(websocket.scope)
    try:
        async for batch in stream:
            if write is None or not write(b"".join(map(_frame, batch))):
                for message in batch:
                    await websocket.send_text(_text(message))
            if batch[-1].get("final"):
                await websocket.close(code=CLOSE_NORMAL, reason="the deployment has finished")
                return
    except NotFound as exc:
        await websocket.close(code=CLOSE_NOT_FOUND, reason=exc.message[:120])


async def _drain(websocket: WebSocket) -> None:
    """Reads (and ignores) what the client sends, so a disconnect is noticed."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
