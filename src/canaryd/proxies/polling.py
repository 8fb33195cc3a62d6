"""Polling a proxy until a condition holds (a new configuration served, an old one gone)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def poll_until(
    probe: Callable[[float], Awaitable[bool]],
    timeout: float,
    interval: float,
    settle: float = 0.0,
    max_interval: float | None = None,
) -> bool:
    """True once `probe` has answered True without a break for `settle` seconds; False after `timeout`.
    `probe` is handed the time left (seconds), to bound its own request. With `max_interval`, the pause
    between probes starts at `interval` and grows by half each time up to `max_interval` (quick changes are
    seen quickly, slow ones are not hammered)."""
    deadline = time.monotonic() + timeout
    held_since: float | None = None
    while True:
        ok = await probe(max(0.05, deadline - time.monotonic()))
        now = time.monotonic()
        held_since = (held_since if held_since is not None else now) if ok else None
        if held_since is not None and now - held_since >= settle:
            return True
        if now + interval > deadline:
            return False
        await asyncio.sleep(interval)
        if max_interval is not None:
            interval = min(max_interval, interval * 1.5)
