"""WebSocket: the status object at once, then every event of the deployment as it happens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

from canaryd.api.deps import websocket_principal
from canaryd.runtime import Runtime
from canaryd.services import deployments
from canaryd.services.errors import NotFound

router = APIRouter(prefix="/api/v1")


@router.websocket("/deployments/{deployment_id}/ws")
async def deployment_ws(websocket: WebSocket, deployment_id: int) -> None:
    rt: Runtime = websocket.app.state.runtime
    principal = await websocket_principal(websocket)
    if principal is None:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason="missing or invalid bearer token")
        return
    # Subscribe before reading the status, so no event falls between the two.
    async with rt.bus.subscribe(deployment_id) as messages:
        try:
            async with rt.sessions() as session:
                current = await deployments.get_status(session, deployment_id)
        except NotFound as exc:
            await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=exc.message)
            return
        await websocket.accept()
        await websocket.send_json({"type": "status", **current})
        receiver = asyncio.create_task(_drain(websocket))
        try:
            async for message in _until_closed(messages, receiver):
                await websocket.send_json(message)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await receiver


async def _drain(websocket: WebSocket) -> None:
    """Reads (and ignores) what the client sends, so a disconnect is noticed."""
    while True:
        await websocket.receive_text()


async def _until_closed(
    messages: AsyncIterator[dict[str, Any]], receiver: asyncio.Task[None]
) -> AsyncIterator[dict[str, Any]]:
    """Messages until the client goes away."""
    iterator = messages.__aiter__()
    while True:
        nxt = asyncio.ensure_future(iterator.__anext__())
        done, _ = await asyncio.wait({nxt, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done:
            nxt.cancel()
            return
        yield nxt.result()
