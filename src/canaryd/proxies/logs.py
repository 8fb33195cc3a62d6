"""Access logs and cumulative counters, read the same way for every proxy: a log is tailed from a byte
offset (complete lines only, a rotated log read from its start); counters are snapshotted into a small state
file beside the configuration, and a reading is the difference to a snapshot."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from canaryd.domain.addresses import address_variants
from canaryd.domain.types import Cohort, CohortStats
from canaryd.proxies.base import ProxyUnavailableError
from canaryd.proxies.files import read_optional, sibling_path, write_atomically
from canaryd.transports.base import Transport, TransportError

logger = logging.getLogger(__name__)

#: Largest slice of an access log read in one call; the rest is read on the next call.
MAX_READ_BYTES = 32 * 1024 * 1024
#: Snapshots a counter state file keeps (a tick that read but did not commit may ask for an older one).
KEPT_SNAPSHOTS = 16


def no_traffic() -> dict[Cohort, CohortStats]:
    return {"canary": CohortStats(), "stable": CohortStats()}


@dataclass(slots=True)
class ParsedLog:
    """What a batch of access-log lines said: per-cohort stats, plus lines that could not be used."""

    cohorts: dict[Cohort, CohortStats] = field(default_factory=no_traffic)
    malformed: int = 0  # not JSON, or fields missing / not numbers
    unrouted: int = 0  # no upstream, or an upstream that belongs to neither cohort


def cohort_lookup(cohort_of: Callable[[str], Cohort | None]) -> Callable[[str], Cohort | None]:
    """`cohort_of` asked with every spelling of an address (`[::1]:80` and `::1:80`), answers memoised."""
    known: dict[str, Cohort | None] = {}

    def lookup(address: str) -> Cohort | None:
        if address not in known:
            known[address] = next(
                (c for c in map(cohort_of, address_variants(address)) if c is not None), None
            )
        return known[address]

    return lookup


@dataclass(frozen=True, slots=True)
class LogSlice:
    """Complete lines read from `offset`; `next_offset` is where the next read starts."""

    lines: list[bytes]
    next_offset: int


async def tail(transport: Transport, path: str, offset: int, where: str) -> LogSlice:
    """The complete lines of the log at `path` after byte `offset`. A log smaller than `offset` was rotated and
    is read from its start; a missing log reads as nothing; a partial last line waits for the next call."""
    try:
        size = await transport.file_size(path)
        if size is None:
            return LogSlice([], offset)
        if size < offset:
            logger.info("log %s shrank below offset %d: rotated, reading from 0", path, offset)
            offset = 0
        if size == offset:
            return LogSlice([], offset)
        data = await transport.read_file(path, offset, min(size - offset, MAX_READ_BYTES))
    except TransportError as exc:
        raise ProxyUnavailableError(f"cannot read {path} on {where}: {exc}") from exc
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) >= MAX_READ_BYTES:  # one absurd line filling the whole window: skip it
            logger.warning("skipping %d bytes of %s without a line end", len(data), path)
            return LogSlice([], offset + len(data))
        return LogSlice([], offset)
    return LogSlice(data[:end].split(b"\n"), offset + end + 1)


async def log_size(transport: Transport, path: str, where: str) -> int:
    """Where the log ends now (0 when it does not exist yet)."""
    try:
        return await transport.file_size(path) or 0
    except TransportError as exc:
        raise ProxyUnavailableError(f"cannot read {path} on {where}: {exc}") from exc


class SnapshotStore:
    """Snapshots of a proxy's cumulative counters in `.<config file>.canaryd-traffic.json`, each with an id
    (the traffic offset handed to the engine) and the time it was taken.

    `data` is whatever the adapter needs to compute a difference later (counters, a process id). A snapshot
    taken when a new configuration was proven live (`mark_live`) lets a reading with `since` start there
    instead of at an older offset: counters carry no timestamps, so this is how traffic routed by the
    previous split is kept out of the new stage."""

    def __init__(
        self, transport: Transport, config_path: str, where: str, work_dir: str | None = None
    ) -> None:
        self.transport = transport
        self.path = sibling_path(config_path, "traffic.json", work_dir)
        self.work_dir = work_dir
        self.where = where

    async def load(self) -> dict[str, Any]:
        try:
            raw = await read_optional(self.transport, self.path)
        except TransportError as exc:
            raise ProxyUnavailableError(f"cannot read {self.path} on {self.where}: {exc}") from exc
        try:
            state = json.loads(raw) if raw is not None else None
        except ValueError:
            logger.warning("%s on %s is not JSON; starting afresh", self.path, self.where)
            state = None
        if not isinstance(state, dict) or not isinstance(state.get("snapshots"), list):
            return {"snapshots": []}
        return state

    async def add(self, state: dict[str, Any], data: dict[str, Any], at: float | None = None) -> int:
        """Stores a new snapshot (and the rest of `state`); returns its id."""
        snapshots = [s for s in state["snapshots"] if isinstance(s, dict) and isinstance(s.get("id"), int)]
        new_id = max((s["id"] for s in snapshots), default=0) + 1
        state["snapshots"] = [
            *snapshots[-(KEPT_SNAPSHOTS - 1) :],
            {"id": new_id, "at": time.time() if at is None else at, "data": data},
        ]
        try:
            await write_atomically(
                self.transport, self.path, json.dumps(state, sort_keys=True).encode(), self.work_dir
            )
        except TransportError as exc:
            raise ProxyUnavailableError(f"cannot write {self.path} on {self.where}: {exc}") from exc
        return new_id

    @staticmethod
    def base(state: dict[str, Any], offset: int, since: float | None) -> dict[str, Any] | None:
        """The snapshot a reading from `offset` starts at: `offset`'s own, or, when a later snapshot was taken
        at or before `since` (the new split proven live before the stage began), the latest such one. None
        when `offset` is unknown (a lost or pruned state file): the reading then counts nothing."""
        snapshots = [s for s in state["snapshots"] if isinstance(s, dict) and isinstance(s.get("id"), int)]
        start = next((s for s in snapshots if s["id"] == offset), None)
        if start is None or since is None:
            return start
        later = [s for s in snapshots if s["id"] > offset and float(s.get("at", 0)) <= since]
        return later[-1] if later else start
