"""The API keeps an idle keep-alive connection open longer than its clients do: a server that closes first
races the client's next request on that connection, which then fails with a reset (httpx.ReadError)."""

from __future__ import annotations

import asyncio

from tests.fixtures.stack import TOKEN, running_canaryd

from canaryd.api.app import KEEP_ALIVE_SECONDS
from canaryd.settings import Settings

HTTPX_KEEPALIVE_EXPIRY = 5.0  # httpx's default: how long a client pool reuses an idle connection


async def _get_healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: canaryd\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head.split(b"\r\n", 1)[0]


async def test_an_idle_connection_outlives_a_client_pool_expiry(sqlite_url: str) -> None:
    """After 6 s idle (past httpx's 5 s pool expiry) the same connection still answers: uvicorn's default of 5 s
    would have closed it."""
    assert KEEP_ALIVE_SECONDS > HTTPX_KEEPALIVE_EXPIRY + 1
    settings = Settings(database_url=sqlite_url, redis_url=None, bootstrap_token=TOKEN)
    async with running_canaryd(settings) as base:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            assert await _get_healthz(reader, writer) == b"HTTP/1.1 200 OK"
            await asyncio.sleep(HTTPX_KEEPALIVE_EXPIRY + 1)
            assert not reader.at_eof()
            assert await _get_healthz(reader, writer) == b"HTTP/1.1 200 OK"
        finally:
            writer.close()
