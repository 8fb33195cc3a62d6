"""CPU and memory load of a server, read with one shell command over its transport.

`cpu_percent` is an approximation: 100 × (1-minute load average) / (number of CPUs). It needs no sampling
interval and works the same over SSH, but the load average also counts tasks waiting for disk, lags by about
a minute and exceeds 100 on an overloaded machine (it is not clamped, so overloaded servers still sort by how
overloaded they are). `memory_percent` is 100 × (1 − MemAvailable / MemTotal). Linux only; anything else, or
any failure, reads as HostLoad(None, None).
"""

from __future__ import annotations

import logging
import re

from canaryd.domain.types import HostLoad
from canaryd.transports.base import Transport, TransportError

logger = logging.getLogger(__name__)

HOST_LOAD_COMMAND = "cat /proc/loadavg; nproc; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo"
HOST_LOAD_TIMEOUT = 10.0

_LOADAVG = re.compile(r"^\s*(\d+(?:\.\d+)?)\s+\d+(?:\.\d+)?\s+\d+(?:\.\d+)?\s+\d+/\d+\s+\d+\s*$")
_NPROC = re.compile(r"^\s*(\d+)\s*$")
_MEMINFO = re.compile(r"^(MemTotal|MemAvailable):\s+(\d+)\s*kB\s*$")


def parse_host_load(text: str) -> HostLoad:
    """Parses the output of HOST_LOAD_COMMAND. Each figure is None when its lines are missing or absurd."""
    load1: float | None = None
    cpus: int | None = None
    mem: dict[str, int] = {}
    for line in text.splitlines():
        if load1 is None and (m := _LOADAVG.match(line)):
            load1 = float(m.group(1))
        elif cpus is None and (m := _NPROC.match(line)):
            cpus = int(m.group(1))
        elif m := _MEMINFO.match(line):
            mem.setdefault(m.group(1), int(m.group(2)))
    cpu = round(100.0 * load1 / cpus, 2) if load1 is not None and cpus else None
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


__all__ = ["HOST_LOAD_COMMAND", "parse_host_load", "read_host_load"]
