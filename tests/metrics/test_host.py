"""Host load: the parser table and a real read of this machine through the local transport."""

from __future__ import annotations

import pytest

from canaryd.domain.types import HostLoad
from canaryd.metrics.host import parse_host_load, read_host_load
from canaryd.transports.base import CommandResult, TransportError
from canaryd.transports.local import LocalTransport

MEM = "MemTotal:       16000000 kB\nMemAvailable:    4000000 kB\n"


CPU0 = "cpu  1000 0 500 8000 500 0 0 0 0 0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1000 jiffies passed, 250 of them idle or iowait: 75 % busy.
        (f"{CPU0}\ncpu  1500 0 750 8200 550 0 0 0 0 0\n{MEM}", HostLoad(75.0, 75.0)),
        (f"{CPU0}\ncpu  1000 0 500 9000 500 0 0 0 0 0\n{MEM}", HostLoad(0.0, 75.0)),  # all idle
        (f"{CPU0}\ncpu  2000 0 500 8000 500 0 0 0 0 0\n{MEM}", HostLoad(100.0, 75.0)),  # never above 100
        (f"{CPU0}\n{MEM}", HostLoad(None, 75.0)),  # one sample: no interval
        (f"{CPU0}\n{CPU0}\n{MEM}", HostLoad(None, 75.0)),  # no time passed
        (f"{CPU0}\ncpu  900 0 500 8000 500 0 0 0 0 0\n{MEM}", HostLoad(None, 75.0)),  # counters went back
        (f"{MEM}", HostLoad(None, 75.0)),
        (f"{CPU0}\ncpu  1500 0 750 8200 550 0 0 0 0 0\n", HostLoad(75.0, None)),
        (
            f"{CPU0}\ncpu  1500 0 750 8200 550 0 0 0 0 0\nMemTotal: 100 kB\nMemAvailable: 200 kB\n",
            HostLoad(75.0, None),
        ),
        ("", HostLoad(None, None)),
        ("garbage\nmore garbage\n", HostLoad(None, None)),
    ],
)
def test_parse_host_load(text: str, expected: HostLoad) -> None:
    """CPU is the busy share between two /proc/stat samples, memory 100·(1 − available/total); missing or
    absurd parts read as None."""
    assert parse_host_load(text) == expected


async def test_reads_this_machine() -> None:
    """A real read through the local transport gives plausible figures."""
    load = await read_host_load(LocalTransport())
    assert load.cpu_percent is not None and 0 <= load.cpu_percent <= 100
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
