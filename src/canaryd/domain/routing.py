"""Which backends the proxy must serve for a deployment's recorded state, and the share they give."""

from __future__ import annotations

from canaryd.domain import batches
from canaryd.domain.plan import UNKNOWN_VERSION, Snapshot
from canaryd.domain.pool import PoolServer
from canaryd.domain.strategy import STOPPED, green_id, runs_green, strategy_for
from canaryd.domain.types import Backend, Cohort, State, split_pool


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
    pool += green_pool(s)
    backends = strategy_for(s.strategy).backends(
        s.config, state, pool, frozenset(s.canary_ids), s.version, percentage, busy, s.weight_limit
    )
    held = batches.held_back(s, state)  # rolling: a batch being deployed, until all of it is healthy
    return (tuple(b for b in backends if b.server_id not in held) or backends) if held else backends


def green_pool(s: Snapshot) -> list[PoolServer]:
    """blue_green (and mirror then: blue_green): every server's green instance (on `green_port`, under
    `green_id`) with the version it runs (STOPPED when it was never started or was stopped; so it is routed
    only once it runs the new version)."""
    if not runs_green(s.strategy, s.config) or s.green_port is None:
        return []
    return [
        PoolServer(green_id(srv.id), srv.host, s.green_port, s.versions.get(green_id(srv.id), STOPPED))
        for srv in s.servers
    ]


def canary_port(s: Snapshot) -> int:
    """The port the new version's instances listen on: blue_green's green_port, else the application's."""
    return s.green_port if runs_green(s.strategy, s.config) and s.green_port is not None else s.port


def address_cohorts(s: Snapshot) -> dict[str, Cohort]:
    """Each instance's `host:port` as the proxy's log names it, and its cohort (blue_green: green is the
    canary, blue the stable cohort, on every server)."""
    if canary_port(s) != s.port:
        blue: dict[str, Cohort] = {f"{srv.host}:{s.port}": "stable" for srv in s.servers}
        return blue | {f"{srv.host}:{canary_port(s)}": "canary" for srv in s.servers}
    canaries = set(s.canary_ids)
    return {f"{srv.host}:{s.port}": "canary" if srv.id in canaries else "stable" for srv in s.servers}


def expected_share(s: Snapshot) -> float | None:
    """The canary's share of requests (0-1) the judge may expect in the recorded state; None when the
    strategy's rules, not a split, decide which requests it gets."""
    return strategy_for(s.strategy).expected_share(routes(s))


def stage_note(s: Snapshot, index: int) -> str:
    """How stage `index` is named in the history ('stage 2 of 4: 25 %', the A/B test's rules, or a rolling
    update's batch and its servers)."""
    if s.strategy == "rolling":
        return batches.note(s, index)
    return strategy_for(s.strategy).stage_note(s.config, index)


def canary_share(backends: tuple[Backend, ...] | list[Backend]) -> float:
    """The canary's share of requests that these weights give, in percent."""
    pool = split_pool(backends)  # A/B rule-bound servers have no share of the random split
    total = sum(b.weight for b in pool)
    canary = sum(b.weight for b in pool if b.cohort == "canary")
    return round(100.0 * canary / total, 3) if total else 0.0


__all__ = [
    "address_cohorts",
    "canary_port",
    "canary_share",
    "expected_share",
    "green_pool",
    "routes",
    "stage_note",
    "target_percentage",
]
