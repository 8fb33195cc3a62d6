"""Which application instances the proxy routes to, and with what weight, in each lifecycle state."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from canaryd.domain.split import split_weights
from canaryd.domain.types import Backend, Cohort, State


@dataclass(frozen=True, slots=True)
class PoolServer:
    """One server of the application as the pool sees it."""

    server_id: int
    host: str
    port: int
    version: str  # the version it runs now


def _cohort(server: PoolServer, new_version: str) -> Cohort:
    return "canary" if server.version == new_version else "stable"


def _equal(servers: Iterable[PoolServer], new_version: str) -> list[Backend]:
    return [Backend(s.server_id, s.host, s.port, 1, _cohort(s, new_version)) for s in servers]


def desired_backends(
    state: State,
    servers: Sequence[PoolServer],
    canary_ids: frozenset[int],
    new_version: str,
    percentage: float,
    busy_server_id: int | None,
    max_weight: int,
) -> tuple[Backend, ...]:
    """See _desired_backends."""
    return _desired_backends(
        state, tuple(servers), canary_ids, new_version, percentage, busy_server_id, max_weight
    )


# Cached: a tick asks for the same deployment's routes two or three times (re-assert, the judge's expected
# share, the check's event), and building them was ~3 % of a worker's CPU per tick. The result is a tuple
# of frozen Backends, so callers can share it.
@functools.lru_cache(maxsize=4096, typed=True)
def _desired_backends(
    state: State,
    servers: tuple[PoolServer, ...],
    canary_ids: frozenset[int],
    new_version: str,
    percentage: float,
    busy_server_id: int | None,
    max_weight: int,
) -> tuple[Backend, ...]:
    """The pool the proxy should serve from, sorted by server_id and never empty.

    - pending, completed, rolled_back: every server, weight 1 (cohort by the version it runs).
    - deploying: canary servers are drained (absent); stable servers weight 1.
    - monitoring, waiting_for_approval, paused: the split (`split_weights`) between canary and stable servers; the canary
      cohort is absent at 0 %, the stable cohort at 100 %. A canary server that does not run `new_version`
      yet (paused while deploying) gets nothing: traffic must never reach a half-deployed instance.
    - promoting: every server except `busy_server_id`, weight 1 (the canary passed; stable servers are
      upgraded one at a time: drained while busy, returned after).
    - rolling_back, failed: servers running anything other than `new_version`, except the busy one,
      weight 1; if none, the new-version servers except the busy one; if none, every server.
    - Whenever the rules leave nobody, every server at weight 1: an empty upstream is invalid for nginx
      and would turn every request into an error.
    """
    if not servers:
        raise ValueError("an application needs at least one server")
    if len({s.server_id for s in servers}) != len(servers):
        raise ValueError("server ids must be unique")
    ordered = sorted(servers, key=lambda s: s.server_id)
    not_busy = [s for s in ordered if s.server_id != busy_server_id]
    stable = [s for s in ordered if s.server_id not in canary_ids]
    backends: list[Backend]

    if state in (State.PENDING, State.COMPLETED, State.ROLLED_BACK):
        backends = _equal(ordered, new_version)
    elif state is State.DEPLOYING:
        backends = [Backend(s.server_id, s.host, s.port, 1, "stable") for s in stable]
    elif state in (State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED):
        ready = [s for s in ordered if s.server_id in canary_ids and s.version == new_version]
        backends = _split(ready, stable, percentage, max_weight)
    elif state is State.PROMOTING:
        backends = _equal(not_busy, new_version)
    elif state in (State.ROLLING_BACK, State.FAILED):
        previous = [s for s in not_busy if s.version != new_version]
        backends = _equal(previous or not_busy, new_version)
    else:  # pragma: no cover - every State is handled above
        raise ValueError(f"unknown state {state!r}")

    return tuple(backends) if backends else tuple(_equal(ordered, new_version))


def _split(
    canary: list[PoolServer], stable: list[PoolServer], percentage: float, max_weight: int
) -> list[Backend]:
    if not canary:  # nothing ready to take canary traffic
        return [Backend(s.server_id, s.host, s.port, 1, "stable") for s in stable]
    if not stable:  # nothing but canaries: they take everything
        return [Backend(s.server_id, s.host, s.port, 1, "canary") for s in canary]
    weights = split_weights(len(canary), len(stable), percentage, max_weight)
    backends = [Backend(s.server_id, s.host, s.port, weights.canary_weight, "canary") for s in canary]
    backends += [Backend(s.server_id, s.host, s.port, weights.stable_weight, "stable") for s in stable]
    return sorted((b for b in backends if b.weight > 0), key=lambda b: b.server_id)


__all__ = ["PoolServer", "desired_backends"]
