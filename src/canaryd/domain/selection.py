"""Which servers become canaries: how many, and the least loaded ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from canaryd.domain.types import HostLoad


class SelectionError(ValueError):
    """Canary servers cannot be chosen for this application."""


def canary_server_count(total: int, percentage: float) -> int:
    """round(total * percentage / 100), at least 1 and at most half of the servers."""
    if total < 2:
        raise SelectionError(f"an application needs at least 2 servers for a canary (it has {total})")
    if not math.isfinite(percentage) or not 0 < percentage <= 100:
        raise ValueError(f"canary server percentage must be greater than 0 and at most 100, not {percentage}")
    # Half up on the exact value: Python's round() would send 2.5 servers to 2 but 3.5 to 4.
    wanted = math.floor(Fraction(str(percentage)) * total / 100 + Fraction(1, 2))
    return max(1, min(wanted, total // 2))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A server that may become a canary, with its latest load readings."""

    server_id: int
    load: HostLoad


def _load_key(candidate: Candidate) -> tuple[bool, float, int]:
    readings = [r for r in (candidate.load.cpu_percent, candidate.load.memory_percent) if r is not None]
    # A server whose load could not be read sorts after every server with a known load.
    return (not readings, max(readings, default=0.0), candidate.server_id)


def select_canary_servers(candidates: Sequence[Candidate], percentage: float) -> list[int]:
    """The ids of the least loaded servers (score = max(cpu, memory)), ties by id; sorted by id."""
    ids = [c.server_id for c in candidates]
    if len(set(ids)) != len(ids):
        raise ValueError("candidate server ids must be unique")
    count = canary_server_count(len(candidates), percentage)
    chosen = sorted(candidates, key=_load_key)[:count]
    return sorted(c.server_id for c in chosen)


def least_loaded(candidates: Sequence[Candidate], count: int) -> list[int]:
    """The ids of the `count` least loaded servers (as `select_canary_servers` ranks them); sorted by id."""
    return sorted(c.server_id for c in sorted(candidates, key=_load_key)[:count])


__all__ = ["Candidate", "SelectionError", "canary_server_count", "least_loaded", "select_canary_servers"]
