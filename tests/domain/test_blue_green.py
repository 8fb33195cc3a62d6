"""Strategy `blue_green` in the pure core: what the proxy serves in each state, the plan of each step of the
decision function, and the strategy's settings problems."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from canaryd.domain.config import CanaryConfig
from canaryd.domain.plan import (
    DeployServer,
    EventKind,
    HealthReading,
    Observed,
    OperatorAction,
    OperatorRequest,
    ServerRef,
    SetRoutes,
    Snapshot,
    StopInstance,
    TrafficSample,
    Trigger,
)
from canaryd.domain.pool import PoolServer
from canaryd.domain.rollout import decide
from canaryd.domain.routing import address_cohorts, expected_share, routes
from canaryd.domain.strategy import GREEN_OFFSET, STOPPED, BlueGreen, green_id, problems, strategy_for
from canaryd.domain.types import CohortStats, MatchRule, State

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CANARY = MatchRule("header", "X-Canary", "equals", "always")
CONFIG = strategy_for("blue_green").effective(
    CanaryConfig.model_validate(
        {"blue_green": {"keep_old": 60}, "stage_duration": 30, "health_check_interval": 10}
    )
)
SERVERS = (ServerRef(1, "a", "10.0.0.1"), ServerRef(2, "b", "10.0.0.2"))


def snap(state: State, versions: dict[int, str] | None = None, **kw: object) -> Snapshot:
    base = Snapshot(
        deployment_id=1,
        application_id=1,
        state=state,
        paused_from=None,
        version="v2",
        previous_version="v1",
        config=CONFIG,
        servers=SERVERS,
        port=8000,
        weight_limit=256,
        canary_ids=(1, 2),
        versions={1: "v1", 2: "v1", **(versions or {})},
        strategy="blue_green",
        green_port=8001,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


GREEN_UP = {green_id(1): "v2", green_id(2): "v2"}


def served(backends: tuple[object, ...]) -> list[tuple[int, int, str, bool]]:
    return [(b.server_id % GREEN_OFFSET, b.port, b.cohort, bool(b.match)) for b in backends]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("state", "versions", "expected"),
    [
        (State.PENDING, {}, [(1, 8000, "stable", False), (2, 8000, "stable", False)]),
        # Green half started: blue serves everything; green is never routed before it is healthy.
        (
            State.DEPLOYING,
            {green_id(1): "v2", green_id(2): "unknown"},
            [(1, 8000, "stable", False), (2, 8000, "stable", False)],
        ),
        (
            State.MONITORING,
            GREEN_UP,
            [
                (1, 8000, "stable", False),
                (2, 8000, "stable", False),
                (1, 8001, "canary", True),
                (2, 8001, "canary", True),
            ],
        ),
        (
            State.PAUSED,
            {green_id(1): "v2"},
            [(1, 8000, "stable", False), (2, 8000, "stable", False), (1, 8001, "canary", True)],
        ),
        (State.PROMOTING, GREEN_UP, [(1, 8001, "canary", False), (2, 8001, "canary", False)]),
        (State.ROLLING_BACK, GREEN_UP, [(1, 8000, "stable", False), (2, 8000, "stable", False)]),
        # After the stop: blue restarted one at a time; green serves until every blue runs again.
        (
            State.ROLLING_BACK,
            {1: STOPPED, 2: STOPPED, **GREEN_UP},
            [(1, 8001, "canary", False), (2, 8001, "canary", False)],
        ),
        # While blue s2 is restarted: green runs on more servers, so it serves (no capacity lost).
        (
            State.ROLLING_BACK,
            {1: "v1", 2: "unknown", **GREEN_UP},
            [(1, 8001, "canary", False), (2, 8001, "canary", False)],
        ),
        (State.ROLLING_BACK, {2: "unknown", green_id(1): "v2"}, [(1, 8000, "stable", False)]),
        (State.FAILED, {1: STOPPED, 2: STOPPED}, [(1, 8000, "stable", False), (2, 8000, "stable", False)]),
    ],
)
def test_what_the_proxy_serves(state: State, versions: dict[int, str], expected: list[object]) -> None:
    """Blue alone until green is healthy; green only for test requests while tested; green alone after the
    switch; blue again on a rollback (green until a blue instance runs); never nothing."""
    got = routes(snap(state, versions))
    assert served(got) == expected
    assert all(b.match == (CANARY,) for b in got if b.match)


def test_share_and_cohorts() -> None:
    """While tested there is no share to expect (the rules decide); after the switch green has it all. Blue's
    address is stable's, green's the canary's, on every server."""
    assert expected_share(snap(State.MONITORING, GREEN_UP)) is None
    assert expected_share(snap(State.PROMOTING, GREEN_UP)) == 1.0
    assert address_cohorts(snap(State.MONITORING)) == {
        "10.0.0.1:8000": "stable",
        "10.0.0.2:8000": "stable",
        "10.0.0.1:8001": "canary",
        "10.0.0.2:8001": "canary",
    }
    assert (
        BlueGreen()
        .stage_note(CONFIG, 0)
        .startswith("blue-green test: requests with header X-Canary = always")
    )


def test_pending_takes_every_server() -> None:
    """Every server gets a green instance; none is drained, no load is needed to choose."""
    plan = decide(snap(State.PENDING, canary_ids=()), Observed(), NOW)
    assert plan.change.trigger is Trigger.START and plan.change.canary_ids == (1, 2)
    assert "port 8001 of every server" in plan.change.events[0].reasons[0]


def test_deploying_starts_green_beside_blue_then_tests() -> None:
    """One green at a time on green_port (recorded under its green id), then the test's routes."""
    plan = decide(snap(State.DEPLOYING), Observed(), NOW)
    (effect,) = plan.effects
    assert isinstance(effect, DeployServer)
    assert (effect.server_id, effect.version, effect.port, effect.record_as) == (1, "v2", 8001, green_id(1))
    plan = decide(snap(State.DEPLOYING, GREEN_UP), Observed(), NOW)
    assert plan.change.trigger is Trigger.CANARY_READY
    routes_effect = plan.effects[0]
    assert isinstance(routes_effect, SetRoutes) and sum(bool(b.match) for b in routes_effect.backends) == 2
    assert plan.change.events[-1].kind is EventKind.STAGE_ADVANCED


def test_promoting_switches_waits_then_stops_blue_and_completes() -> None:
    """The switch is recorded, blue kept keep_old seconds, then stopped everywhere; the proxy serves the same
    green instances under their servers' ids and the ports trade places."""
    s = snap(State.PROMOTING, GREEN_UP)
    plan = decide(s, Observed(), NOW)
    assert plan.change.switched and plan.change.next_tick_in == 10
    assert plan.change.events[0].kind is EventKind.TRAFFIC_SWITCHED
    assert plan.change.stage is not None and plan.change.stage.at is None  # green's watch counts from here
    waiting = decide(replace(s, switched_at=NOW), Observed(), NOW + timedelta(seconds=55))
    assert not waiting.effects and waiting.change.next_tick_in == 5
    done = decide(replace(s, switched_at=NOW), Observed(), NOW + timedelta(seconds=60))
    stops = [e for e in done.effects if isinstance(e, StopInstance)]
    assert [(e.server_id, e.port, e.record_as) for e in stops] == [(1, 8000, 1), (2, 8000, 2)]
    final = done.effects[-1]
    assert isinstance(final, SetRoutes) and served(final.backends) == [
        (1, 8001, "canary", False),
        (2, 8001, "canary", False),
    ]
    assert all(b.server_id < GREEN_OFFSET for b in final.backends)
    assert done.change.trigger is Trigger.COMPLETE and done.change.swap_ports
    assert done.change.application_version == "v2"


@pytest.mark.parametrize(
    ("errors", "health", "rolls_back", "blue_counted"),
    [
        (0, True, False, True),
        (1, True, False, True),  # 1 % over blue's 0 %: under the 5 pp limit
        (20, True, True, True),
        (0, False, True, True),  # the third failed health check in a row
        # Switched before blue was ever counted: green held to the threshold itself.
        (1, True, False, False),
        (20, True, True, False),
    ],
)
def test_green_is_watched_while_blue_runs(
    errors: int, health: bool, rolls_back: bool, blue_counted: bool
) -> None:
    """After the switch, green's error rate since the switch (against blue's before it, or 0 % when blue was
    never counted) and its health checks are watched; a failure switches back to blue at once, in the same
    tick."""
    baseline, green = CohortStats(), CohortStats()
    for i in range(200):
        if blue_counted:
            baseline.record(200, 5.0)
        green.record(500 if i < errors * 2 else 200, 5.0)
    s = snap(State.PROMOTING, GREEN_UP, switched_at=NOW, baseline=baseline, health_failures=2)
    reading = HealthReading(health, "ok" if health else "HTTP 503")
    seen = Observed(
        health={1: reading, 2: HealthReading(True, "ok")}, traffic=TrafficSample(green, CohortStats(), 9)
    )
    plan = decide(s, seen, NOW + timedelta(seconds=30))
    assert plan.facts.log_offset == 9 and plan.facts.stage_canary == green
    if not rolls_back:
        assert plan.change.trigger is None and not plan.effects
        return
    assert plan.change.trigger is Trigger.ROLLBACK
    assert "after the switch" in plan.change.events[0].reasons[0]
    assert blue_counted or "vs no figures of blue (0 %)" in plan.change.events[0].reasons[0]
    cut = plan.effects[0]
    assert isinstance(cut, SetRoutes) and {b.port for b in cut.backends} == {8000}


def test_rollback_restores_blue_then_stops_green() -> None:
    """A stopped blue is started again first (on the port), then every running green is stopped; then the
    rollback finishes."""
    s = snap(State.ROLLING_BACK, {1: STOPPED, **GREEN_UP})
    plan = decide(s, Observed(), NOW)
    deploy = plan.effects[0]
    assert isinstance(deploy, DeployServer) and (deploy.server_id, deploy.version, deploy.port) == (
        1,
        "v1",
        None,
    )
    plan = decide(snap(State.ROLLING_BACK, {green_id(1): "v2", green_id(2): "unknown"}), Observed(), NOW)
    assert [(e.port, e.record_as) for e in plan.effects if isinstance(e, StopInstance)] == [
        (8001, green_id(1)),
        (8001, green_id(2)),
    ]
    plan = decide(snap(State.ROLLING_BACK, {green_id(1): STOPPED}), Observed(), NOW)
    assert plan.change.trigger is Trigger.FINISH_ROLLBACK


def test_operator_promote_is_the_switch_and_rollback_goes_back() -> None:
    """Promote during the test starts promoting (the switch); rollback after the switch is allowed."""
    plan = decide(snap(State.MONITORING, GREEN_UP), OperatorRequest(OperatorAction.PROMOTE, "op"), NOW)
    assert plan.change.trigger is Trigger.PROMOTE
    after = snap(State.PROMOTING, GREEN_UP, switched_at=NOW)
    plan = decide(after, OperatorRequest(OperatorAction.ROLLBACK, "op"), NOW)
    assert plan.change.trigger is Trigger.ROLLBACK
    assert served(routes(replace(after, state=State.ROLLING_BACK))) == [
        (1, 8000, "stable", False),
        (2, 8000, "stable", False),
    ]


def test_strategy_problems() -> None:
    """One test stage, every server, no A/B block; blue_green settings with another strategy are refused."""
    assert problems("blue_green", {}, CONFIG) == []
    own = {"stages": [10], "canary_server_percentage": 20, "ab": {}, "approve_before": [100]}
    assert [loc for loc, _ in problems("blue_green", own, None)] == [
        ("body", "config", "ab"),
        ("body", "config", "stages"),
        ("body", "config", "canary_server_percentage"),
        ("body", "config", "approve_before"),
    ]
    assert [loc for loc, _ in problems("canary", {"blue_green": {}}, None)] == [
        ("body", "config", "blue_green")
    ]
    assert CONFIG.stages == [100.0] and CONFIG.blue_green is not None and CONFIG.blue_green.keep_old == 60
    assert strategy_for("blue_green").effective(CanaryConfig()).blue_green is not None


def test_pool_of_green_ids_stays_apart() -> None:
    """A green instance's id never collides with a server id, so every proxy names the two apart."""
    pool = [PoolServer(1, "h", 8000, "v1"), PoolServer(green_id(1), "h", 8001, "v2")]
    got = BlueGreen().backends(CONFIG, State.MONITORING, pool, frozenset({1}), "v2", 100.0, None, 256)
    assert {b.server_id for b in got} == {1, GREEN_OFFSET + 1}
