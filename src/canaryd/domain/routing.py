"""Which backends the proxy must serve for a deployment's recorded state, and the share they give."""

from __future__ import annotations

from canaryd.domain.plan import UNKNOWN_VERSION, Snapshot
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import Backend, State


def target_percentage(s: Snapshot, state: State) -> float:
    """The canary's share of requests that `state` asks for at the deployment's stage."""
    if state in (State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED):
        return s.config.stages[s.stage_index]
    return 100.0 if state is State.PROMOTING else 0.0


def routes(
    s: Snapshot, state: State | None = None, percentage: float | None = None, busy: int | None = None
) -> tuple[Backend, ...]:
    """The backends the proxy must serve (for `state`, default the recorded one). A server whose deploy was
    interrupted (version unknown) is kept out as if busy, and is never routed to as stable."""
    state = s.state if state is None else state
    percentage = target_percentage(s, state) if percentage is None else percentage
    if busy is None:
        busy = next((sid for sid, v in sorted(s.versions.items()) if v == UNKNOWN_VERSION), None)
    pool = [
        PoolServer(srv.id, srv.host, s.port, s.version if s.version_of(srv.id) == UNKNOWN_VERSION else v)
        for srv in s.servers
        for v in [s.version_of(srv.id)]
    ]
    return desired_backends(state, pool, frozenset(s.canary_ids), s.version, percentage, busy, s.weight_limit)


def canary_share(backends: tuple[Backend, ...] | list[Backend]) -> float:
    """The canary's share of requests that these weights give, in percent."""
    total = sum(b.weight for b in backends)
    canary = sum(b.weight for b in backends if b.cohort == "canary")
    return round(100.0 * canary / total, 3) if total else 0.0


__all__ = ["canary_share", "routes", "target_percentage"]
