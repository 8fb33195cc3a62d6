"""Host load: the parser table and a real read of this machine through the local transport."""

from __future__ import annotations

import pytest

from canaryd.domain.types import HostLoad
from canaryd.metrics.host import parse_host_load, read_host_load
from canaryd.transports.base import CommandResult, TransportError
from canaryd.transports.local import LocalTransport

MEM = "MemTotal:       16000000 kB\nMemAvailable:    4000000 kB\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"2.00 1.50 1.00 3/456 7890\n4\n{MEM}", HostLoad(50.0, 75.0)),
        (f"0.00 0.00 0.00 1/100 1\n8\n{MEM}", HostLoad(0.0, 75.0)),
        (f"12.00 8.00 4.00 30/456 7890\n4\n{MEM}", HostLoad(300.0, 75.0)),  # overloaded: not clamped
        (f"{MEM}", HostLoad(None, 75.0)),
        ("1.00 1.00 1.00 1/1 1\n2\n", HostLoad(50.0, None)),
        (f"1.00 1.00 1.00 1/1 1\n0\n{MEM}", HostLoad(None, 75.0)),  # zero CPUs is nonsense
        (f"1.00 1.00 1.00 1/1 1\n{MEM}", HostLoad(None, 75.0)),  # nproc missing
        ("1.00 1.00 1.00 1/1 1\n2\nMemTotal: 100 kB\nMemAvailable: 200 kB\n", HostLoad(50.0, None)),
        ("1.00 1.00 1.00 1/1 1\n2\nMemTotal: 0 kB\nMemAvailable: 0 kB\n", HostLoad(50.0, None)),
        ("", HostLoad(None, None)),
        ("garbage\nmore garbage\n", HostLoad(None, None)),
    ],
)
def test_parse_host_load(text: str, expected: HostLoad) -> None:
    """CPU is 100·load1/nproc, memory 100·(1 − available/total); missing or absurd parts read as None."""
    assert parse_host_load(text) == expected


async def test_reads_this_machine() -> None:
    """A real read through the local transport gives plausible figures."""
    load = await read_host_load(LocalTransport())
    assert load.cpu_percent is not None and load.cpu_percent >= 0
    assert load.memory_percent is not None and 0 <= load.memory_percent <= 100


class UnreachableTransport(LocalTransport):
    """A server that cannot be reached."""

    async def run(self, command: str, timeout: float) -> CommandResult:
        raise TransportError("connection refused")


class NotLinuxTransport(LocalTransport):
    """A server where /proc does not exist."""

    async def run(self, command: str, timeout: float) -> CommandResult:
        return await super().run(command.replace("/proc/", "/nonexistent-proc/"), timeout)


@pytest.mark.parametrize("transport", [UnreachableTransport(), NotLinuxTransport()])
async def test_failure_reads_as_unknown(transport: LocalTransport) -> None:
    """An unreachable server or a failing command gives HostLoad(None, None), never an exception."""
    assert await read_host_load(transport) == HostLoad(None, None)
