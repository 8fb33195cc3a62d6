"""Health checks against real sample-app instances and small real TCP servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from canaryd.metrics.health import check_health, health_url

if TYPE_CHECKING:
    from tests.fixtures.apps import AppFleet

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The shared client canaryd hands to health checks."""
    async with httpx.AsyncClient() as client:
        yield client


async def serve(host: str, handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, host, 0)
    return server, server.sockets[0].getsockname()[1]


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and reads, never answers; lets go when the client hangs up (or after 10 s)."""
    try:
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass
    except TimeoutError:
        pass
    writer.close()


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def test_healthy_instance(app_fleet: AppFleet, http: httpx.AsyncClient) -> None:
    """A running v1 instance answers 200: ok, with status and latency."""
    app = app_fleet.start("127.0.0.2", "v1")
    result = await check_health(http, app.host, app.port, "/health", timeout=2)
    assert result.ok and result.status == 200
    assert 0 < result.latency_ms < 2000
    assert "200" in result.detail


async def test_dead_version_is_unhealthy(app_fleet: AppFleet, http: httpx.AsyncClient) -> None:
    """A "dead" version answers 503: not ok, and the status is reported."""
    app = app_fleet.start("127.0.0.3", "v2-dead")
    result = await check_health(http, app.host, app.port, "/health", timeout=2)
    assert not result.ok and result.status == 503
    assert "503" in result.detail


async def test_closed_port_is_unhealthy(http: httpx.AsyncClient) -> None:
    """Nothing listening: a failed result naming the URL, no exception."""
    server, port = await serve("127.0.0.4", hang)
    server.close()
    await server.wait_closed()
    result = await check_health(http, "127.0.0.4", port, "/health", timeout=2)
    assert not result.ok and result.status is None
    assert f"127.0.0.4:{port}" in result.detail


async def test_hanging_endpoint_fails_within_timeout(http: httpx.AsyncClient) -> None:
    """A server that accepts but never answers gives a failed result within the timeout."""
    server, port = await serve("127.0.0.5", hang)
    try:
        started = time.perf_counter()
        result = await check_health(http, "127.0.0.5", port, "/health", timeout=0.3)
        elapsed = time.perf_counter() - started
    finally:
        server.close()
    assert not result.ok and result.status is None
    assert "within 0.3 s" in result.detail
    assert 0.25 <= elapsed < 1.0


async def test_ipv6_instance(http: httpx.AsyncClient) -> None:
    """An IPv6 address is put in brackets and checked like any other."""
    server, port = await serve("::1", answer_ok)
    try:
        result = await check_health(http, "::1", port, "/health", timeout=2)
    finally:
        server.close()
    assert result.ok and result.status == 204


@pytest.mark.parametrize(
    ("host", "path", "url"),
    [
        ("127.0.0.2", "/health", "http://127.0.0.2:80/health"),
        ("::1", "/health", "http://[::1]:80/health"),
        ("[fd00::1]", "/h?x=1", "http://[fd00::1]:80/h?x=1"),
        ("app.example", "health", "http://app.example:80/health"),
    ],
)
def test_health_url(host: str, path: str, url: str) -> None:
    """URLs bracket IPv6 addresses and always have a leading slash in the path."""
    assert health_url(host, 80, path) == url
