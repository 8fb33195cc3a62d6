"""The pool the proxy should serve from, per lifecycle state."""

from __future__ import annotations

import pytest

from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import State

OLD, NEW = "1.0", "2.0"


def servers(*versions: str) -> list[PoolServer]:
    """Servers 1..n on 127.0.0.n:8000 running the given versions."""
    return [PoolServer(i, f"127.0.0.{i}", 8000, v) for i, v in enumerate(versions, start=1)]


def pool(
    state: State,
    fleet: list[PoolServer],
    canary: set[int] = frozenset({1}),  # type: ignore[assignment]
    percentage: float = 25,
    busy: int | None = None,
) -> list[tuple[int, int, str]]:
    """desired_backends, as (server_id, weight, cohort) triples."""
    backends = desired_backends(state, fleet, frozenset(canary), NEW, percentage, busy, 1000)
    return [(b.server_id, b.weight, b.cohort) for b in backends]


CANARY_UP = servers(NEW, OLD, OLD, OLD, OLD)  # server 1 is the canary and runs the new version
ALL_OLD = servers(OLD, OLD, OLD, OLD, OLD)
ALL_NEW = servers(NEW, NEW, NEW, NEW, NEW)
S = "stable"
C = "canary"


@pytest.mark.parametrize(
    ("state", "fleet", "kwargs", "expected"),
    [
        (State.PENDING, ALL_OLD, {}, [(1, 1, S), (2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        (State.COMPLETED, ALL_NEW, {}, [(1, 1, C), (2, 1, C), (3, 1, C), (4, 1, C), (5, 1, C)]),
        (State.ROLLED_BACK, ALL_OLD, {}, [(1, 1, S), (2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        # deploying: the canary server is drained
        (State.DEPLOYING, ALL_OLD, {}, [(2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        (State.DEPLOYING, CANARY_UP, {}, [(2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        # monitoring: 25 % of requests to 1 canary against 4 stable servers → weights 4 and 3
        (State.MONITORING, CANARY_UP, {}, [(1, 4, C), (2, 3, S), (3, 3, S), (4, 3, S), (5, 3, S)]),
        (State.PAUSED, CANARY_UP, {}, [(1, 4, C), (2, 3, S), (3, 3, S), (4, 3, S), (5, 3, S)]),
        (State.MONITORING, CANARY_UP, {"percentage": 0}, [(2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        (State.MONITORING, CANARY_UP, {"percentage": 100}, [(1, 1, C)]),
        (
            State.MONITORING,
            CANARY_UP,
            {"percentage": 50},
            [(1, 4, C), (2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)],
        ),
        # paused while deploying: a canary not yet on the new version gets nothing
        (State.PAUSED, ALL_OLD, {}, [(2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        # promoting: everyone but the server being upgraded
        (
            State.PROMOTING,
            servers(NEW, NEW, OLD, OLD, OLD),
            {"busy": 3},
            [(1, 1, C), (2, 1, C), (4, 1, S), (5, 1, S)],
        ),
        (State.PROMOTING, CANARY_UP, {}, [(1, 1, C), (2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        # rolling back: previous-version servers only, minus the busy one
        (State.ROLLING_BACK, CANARY_UP, {}, [(2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        (State.ROLLING_BACK, servers(NEW, NEW, OLD, OLD, OLD), {"busy": 3}, [(4, 1, S), (5, 1, S)]),
        (State.FAILED, CANARY_UP, {"busy": 1}, [(2, 1, S), (3, 1, S), (4, 1, S), (5, 1, S)]),
        # rolling back after a full promotion: no old servers left, so new ones except the busy one
        (State.ROLLING_BACK, ALL_NEW, {"busy": 2}, [(1, 1, C), (3, 1, C), (4, 1, C), (5, 1, C)]),
    ],
)
def test_pool_per_state(
    state: State, fleet: list[PoolServer], kwargs: dict[str, object], expected: list[tuple[int, int, str]]
) -> None:
    """Each state routes to the servers and weights DESIGN.md describes."""
    assert pool(state, fleet, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "fleet", "canary", "busy"),
    [
        (State.DEPLOYING, servers(OLD, OLD), {1, 2}, None),  # every server is a canary
        (State.ROLLING_BACK, servers(NEW), {1}, 1),  # the only server is busy
        (State.PROMOTING, servers(NEW), {1}, 1),
        (State.MONITORING, servers(NEW, NEW), {1, 2}, None),  # no stable servers at all
    ],
)
def test_pool_is_never_empty(
    state: State, fleet: list[PoolServer], canary: set[int], busy: int | None
) -> None:
    """When the rules would leave nobody, every server serves at equal weight."""
    result = pool(state, fleet, canary=canary, busy=busy)
    assert [sid for sid, _, _ in result] == [s.server_id for s in fleet]
    assert {w for _, w, _ in result} == {1}


def test_pool_is_sorted_by_server_id() -> None:
    """Input order does not matter; output is sorted by server_id."""
    fleet = list(reversed(CANARY_UP))
    assert [sid for sid, _, _ in pool(State.MONITORING, fleet)] == [1, 2, 3, 4, 5]


def test_split_share_is_by_requests() -> None:
    """Two canary servers against three stable at 10 %: the canary cohort's weight share is 10 %."""
    fleet = servers(NEW, NEW, OLD, OLD, OLD)
    result = pool(State.MONITORING, fleet, canary={1, 2}, percentage=10)
    canary_weight = sum(w for _, w, c in result if c == C)
    assert canary_weight / sum(w for _, w, _ in result) == pytest.approx(0.10)


@pytest.mark.parametrize(
    ("fleet", "message"),
    [([], "at least one server"), ([PoolServer(1, "a", 1, OLD), PoolServer(1, "b", 1, OLD)], "unique")],
)
def test_bad_server_lists(fleet: list[PoolServer], message: str) -> None:
    """An empty or duplicated server list is a caller error."""
    with pytest.raises(ValueError, match=message):
        pool(State.PENDING, fleet)
