"""Transport.unix_request (HAProxy's admin socket) over the local transport and over real SSH."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from canaryd.transports.base import Transport, TransportError
from canaryd.transports.local import LocalTransport
from canaryd.transports.ssh import SshPool

if TYPE_CHECKING:
    from tests.fixtures.haproxy import HaproxyInstance
    from tests.fixtures.sshd import SshServer


@pytest.fixture
async def upper_socket(tmp_path: Path) -> AsyncIterator[str]:
    """A unix stream socket that answers what it read until EOF, upper-cased, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data.upper() * 2)
        await writer.drain()
        writer.close()

    path = str(tmp_path / "upper.sock")
    server = await asyncio.start_unix_server(handle, path)
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(params=["local", "ssh"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """The same tests over the local transport and over SSH (direct stream-local forwarding)."""
    if request.param == "local":
        return LocalTransport()
    sshd: SshServer = request.getfixturevalue("sshd")
    pool: SshPool = request.getfixturevalue("ssh_pool")
    return pool.transport(sshd.host, sshd.port, sshd.user)


async def test_request_reads_until_eof(transport: Transport, upper_socket: str) -> None:
    """The payload reaches the socket and the whole answer comes back."""
    assert await transport.unix_request(upper_socket, b"show info\n", 5.0) == b"SHOW INFO\nSHOW INFO\n"


async def test_missing_socket_is_a_transport_error(transport: Transport, tmp_path: Path) -> None:
    """A socket that is not there raises TransportError naming the path."""
    with pytest.raises(TransportError, match=r"nope\.sock"):
        await transport.unix_request(str(tmp_path / "nope.sock"), b"x\n", 5.0)


async def test_silent_socket_times_out(transport: Transport, tmp_path: Path) -> None:
    """A socket that never answers is bounded by the timeout."""
    never = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never.wait()
        writer.close()

    path = str(tmp_path / "silent.sock")
    server = await asyncio.start_unix_server(handle, path)
    try:
        with pytest.raises(TransportError, match="within"):
            await transport.unix_request(path, b"x\n", 0.3)
    finally:
        never.set()
        await asyncio.sleep(0)  # let the handler close its writer
        server.close()
        await server.wait_closed()


async def test_haproxy_admin_socket(transport: Transport, haproxy_instance: HaproxyInstance) -> None:
    """HAProxy's admin socket answers `show info` through the transport."""
    answer = await transport.unix_request(haproxy_instance.socket, b"show info\n", 5.0)
    assert b"Name: HAProxy" in answer
