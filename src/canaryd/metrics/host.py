"""CPU and memory use of a server, read with one shell command over its transport.

`cpu_percent` is the share of CPU time that was busy (all CPUs together, 0-100) over a 0.5 s window: the
aggregate `cpu` line of /proc/stat read twice, busy = 100 × (Δtotal − Δidle − Δiowait) / Δtotal. (It used to
be the 1-minute load average ÷ CPUs, which is not a percentage: 314.5 on a busy machine.) `memory_percent`
is 100 × (1 − MemAvailable / MemTotal). Linux only; anything else, or any failure, reads as
HostLoad(None, None).
"""

from __future__ import annotations

import logging
import re

from canaryd.domain.types import HostLoad
from canaryd.transports.base import Transport, TransportError

logger = logging.getLogger(__name__)

#: Seconds between the two /proc/stat samples.
CPU_SAMPLE_SECONDS = 0.5
HOST_LOAD_COMMAND = (
    f"grep '^cpu ' /proc/stat; sleep {CPU_SAMPLE_SECONDS}; grep '^cpu ' /proc/stat; "
    "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo"
)
HOST_LOAD_TIMEOUT = 10.0

_CPU = re.compile(r"^cpu\s+((?:\d+\s+){3,}\d+)\s*$")
_MEMINFO = re.compile(r"^(MemTotal|MemAvailable):\s+(\d+)\s*kB\s*$")


def cpu_busy_percent(first: list[int], second: list[int]) -> float | None:
    """Busy share between two /proc/stat `cpu` samples (user nice system idle iowait irq softirq steal …)."""
    if len(first) < 4 or len(second) != len(first):
        return None
    # guest and guest_nice (fields 9 and 10) are already counted in user and nice.
    before, after = first[:8], second[:8]
    total = sum(after) - sum(before)
    idle = sum(after[3:5]) - sum(before[3:5])
    if total <= 0 or idle < 0 or idle > total:
        return None
    return round(100.0 * (total - idle) / total, 2)


def parse_host_load(text: str) -> HostLoad:
    """Parses the output of HOST_LOAD_COMMAND. Each figure is None when its lines are missing or absurd."""
    samples: list[list[int]] = []
    mem: dict[str, int] = {}
    for line in text.splitlines():
        if m := _CPU.match(line):
            samples.append([int(x) for x in m.group(1).split()])
        elif m := _MEMINFO.match(line):
            mem.setdefault(m.group(1), int(m.group(2)))
    cpu = cpu_busy_percent(samples[0], samples[1]) if len(samples) >= 2 else None
    total, available = mem.get("MemTotal"), mem.get("MemAvailable")
    memory: float | None = None
    if total and available is not None and available <= total:
        memory = round(100.0 * (1.0 - available / total), 2)
    return HostLoad(cpu_percent=cpu, memory_percent=memory)


async def read_host_load(transport: Transport) -> HostLoad:
    """The server's load; a figure that cannot be read is None (both when the command cannot run)."""
    try:
        result = await transport.run(HOST_LOAD_COMMAND, timeout=HOST_LOAD_TIMEOUT)
    except (TransportError, OSError, TimeoutError) as exc:
        logger.info("cannot read host load: %s", exc)
        return HostLoad(None, None)
    load = parse_host_load(result.stdout)  # partial output still gives what it can (exit is grep's)
    if not result.ok:
        logger.info("host load command failed (exit %d): %s", result.exit_status, result.tail())
    return load


__all__ = ["HOST_LOAD_COMMAND", "cpu_busy_percent", "parse_host_load", "read_host_load"]
