"""Bounded input: request bodies and WebSocket messages larger than `max_body_bytes` are refused before
they are read in full.

An HTTP request whose `Content-Length` is over the limit gets 413 at once, without a byte of its body being
read; a body without a length (chunked) is counted as it streams in and refused as soon as the count passes
the limit, so the server never holds more than the limit plus one chunk. A WebSocket message over the limit
closes the socket with 1009 (message too big). uvicorn's own `ws_max_size` bounds a message at the protocol
level; this is the application's limit, the same on every server.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

WS_MESSAGE_TOO_BIG = 1009


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes (CANARYD_MAX_BODY_BYTES)"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the count passes the limit. An HTTPException, so that FastAPI, which reads
    the body for the route, answers it as 413 (it turns other errors met while reading into a 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large(max_bytes), headers={"Connection": "close"})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": _too_large(self.max_bytes)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:  # a route outside FastAPI's handlers read the body
            if not started:
                await self._refuse(send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        closed = False

        async def bounded_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive":
                size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
                if size > self.max_bytes and not closed:
                    closed = True
                    await send(
                        {
                            "type": "websocket.close",
                            "code": WS_MESSAGE_TOO_BIG,
                            "reason": f"message larger than {self.max_bytes} bytes",
                        }
                    )
                    return {"type": "websocket.disconnect", "code": WS_MESSAGE_TOO_BIG}
            return message

        await self.app(scope, bounded_receive, send)
