"""Frames made once for every subscriber are the frames websockets itself would send."""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.api.test_live import AUTH, STILL, ws_url
from tests.fixtures.stack import Stack
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from canaryd.api.frames import FramedWebSocketProtocol, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_frame_is_what_websockets_sends(size: int) -> None:
    text = ("é" * size)[: size // 2] + "x" * (size - size // 2)  # multi-byte characters count as bytes
    assert text_frame(text) == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


@pytest.mark.parametrize("offered", [True, False])
async def test_live_view_writes_ready_made_frames(
    any_stack: Stack, monkeypatch: pytest.MonkeyPatch, offered: bool
) -> None:
    """Through the server's frame writer, or through ASGI when it declines (a slow client), a client gets
    the same messages: the status, then each event followed by the status."""
    writes: list[bytes] = []

    def write(self: FramedWebSocketProtocol, frames: bytes) -> bool:
        if not offered:
            return False
        writes.append(frames)
        return original(self, frames)

    original = FramedWebSocketProtocol._write_frames
    monkeypatch.setattr(FramedWebSocketProtocol, "_write_frames", write)
    s = any_stack
    await s.register("v1")
    r = await s.deploy("v2", STILL)
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)
    async with connect(ws_url(s, dep_id), additional_headers=AUTH) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "status" and first["canary_status"] == "monitoring"
        assert (await s.api.post(f"/deployments/{dep_id}/pause")).status_code == 202
        got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
    assert [m["type"] for m in got] == ["event", "status"]
    assert got[0]["kind"] == "paused" and got[1]["canary_status"] == "paused"
    # The first status alone, then the event and its status in one write: they were published together
    # (in production, in one Redis pipeline) and heard in one turn of the bus.
    assert len(writes) == (2 if offered else 0), writes
