"""WebSocket text frames made once and written as they are to every subscriber of a message.

A server's frames are not masked, so the frame of one message is the same bytes for every client that gets
it. uvicorn's ASGI `send` frames each message again for each client (encode the text, build the frame, join
the output: with two frames per event, most of the cost of fanning one event out to 500 WebSockets). The
protocol below is uvicorn's websockets-sansio one plus an ASGI extension, `canaryd.websocket.frames`, whose
`write(frames)` puts ready-made frames on the connection's transport. An app served without it (another
server, a test client) sends through ASGI as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, MutableMapping
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

EXTENSION = "canaryd.websocket.frames"
_TEXT = 0x81  # FIN, opcode 1 (text); no RSV bit: not compressed


def text_frame(text: str) -> bytes:
    """`text` as one unmasked, unfragmented text frame (RFC 6455 §5.2)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", _TEXT, n)
    elif n < 65536:
        head = struct.pack("!BBH", _TEXT, 126, n)
    else:
        head = struct.pack("!BBQ", _TEXT, 127, n)
    return head + data


class FramedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering the app a way to write ready-made frames."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and self.handshake_initiated and not self.close_sent:
            # The app's task starts at the next turn of the loop, so it sees the extension.
            scope["extensions"][EXTENSION] = {"write": self._write_frames}

    def _write_frames(self, frames: bytes) -> bool:
        """Writes frames made by `text_frame`; False when they must go through ASGI `send` instead: the
        connection is not open, an extension (permessage-deflate) was negotiated, or the client reads too
        slowly (`send` then waits until the transport drains, as it does for everything else)."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.conn.state is not State.OPEN
            or self.conn.extensions
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frames)
        return True


def frame_writer(scope: MutableMapping[str, Any]) -> Callable[[bytes], bool] | None:
    """The connection's `write(frames) -> bool`, if its server offers one."""
    extension = (scope.get("extensions") or {}).get(EXTENSION)
    write: Callable[[bytes], bool] | None = None if extension is None else extension["write"]
    return write
