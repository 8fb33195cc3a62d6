"""`mirror.then: blue_green` in the pure core (Flagger's blue/green with traffic mirroring): green beside blue
on every server; stage 1 copies a share of the live requests to green while blue answers every client; stage
2 is blue_green's test; then blue_green's switch. The stage plan, what the proxy serves, the judge's share, the
history notes, the decisions between the phases, and the settings' problems."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from canaryd.domain.config import CanaryConfig
from canaryd.domain.plan import (
    DeployServer,
    EventKind,
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
from canaryd.domain.rollout import decide
from canaryd.domain.routing import address_cohorts, canary_share, expected_share, routes, stage_note
from canaryd.domain.strategy import GREEN_OFFSET, green_id, problems, runs_green, strategy_for
from canaryd.domain.types import CohortStats, State

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = strategy_for("mirror").effective(
    CanaryConfig.model_validate(
        {
            "mirror": {"percent": 20, "then": "blue_green"},
            "blue_green": {"keep_old": 60},
            "stage_duration": 30,
            "health_check_interval": 10,
            "judge": "threshold",
            "min_requests": 10,
        }
    )
)
SERVERS = (ServerRef(1, "a", "10.0.0.1"), ServerRef(2, "b", "10.0.0.2"))
GREEN_UP = {green_id(1): "v2", green_id(2): "v2"}


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
        strategy="mirror",
        green_port=8001,
        stage_started_at=NOW,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def served(backends: tuple[Any, ...]) -> list[tuple[int, int, str, bool, int]]:
    """(server, port, cohort, bound to the test rules, mirror percent) of each backend."""
    return [(b.server_id % GREEN_OFFSET, b.port, b.cohort, bool(b.match), b.mirror) for b in backends]


def stats(requests: int, errors: int) -> CohortStats:
    out = CohortStats()
    for i in range(requests):
        out.record(500 if i < errors else 200, 5.0)
    return out


def test_stage_plan_and_settings() -> None:
    """Two stages: the mirror phase (50 only marks it), then the test; blue_green's settings come with it
    (its defaults when not given); only then: blue_green runs green."""
    assert CONFIG.stages == [50.0, 100.0]
    assert CONFIG.blue_green is not None and CONFIG.blue_green.keep_old == 60
    bare = strategy_for("mirror").effective(
        CanaryConfig.model_validate({"mirror": {"percent": 5, "then": "blue_green"}, "rolling": {}})
    )
    assert bare.blue_green is not None and bare.blue_green.keep_old == 300 and bare.rolling is None
    assert runs_green("mirror", CONFIG) and runs_green("blue_green", CanaryConfig())
    canary_then = CanaryConfig.model_validate({"mirror": {"percent": 5}, "blue_green": {}})
    assert not runs_green("mirror", canary_then)
    assert strategy_for("mirror").effective(canary_then).blue_green is None


BLUE = [(1, 8000, "stable", False, 0), (2, 8000, "stable", False, 0)]


@pytest.mark.parametrize(
    ("state", "stage", "versions", "expected"),
    [
        (State.PENDING, 0, {}, BLUE),
        (State.DEPLOYING, 0, {green_id(1): "v2", green_id(2): "unknown"}, BLUE),
        # The mirror phase: blue answers every request; green gets copies of 20 % and no live request.
        (
            State.MONITORING,
            0,
            GREEN_UP,
            [*BLUE, (1, 8001, "canary", False, 20), (2, 8001, "canary", False, 20)],
        ),
        (State.PAUSED, 0, {green_id(1): "v2"}, [*BLUE, (1, 8001, "canary", False, 20)]),
        # The test: green gets only the requests matching the test rules.
        (State.MONITORING, 1, GREEN_UP, [*BLUE, (1, 8001, "canary", True, 0), (2, 8001, "canary", True, 0)]),
        (State.PROMOTING, 1, GREEN_UP, [(1, 8001, "canary", False, 0), (2, 8001, "canary", False, 0)]),
        (State.ROLLING_BACK, 0, GREEN_UP, BLUE),
        (State.ROLLING_BACK, 1, GREEN_UP, BLUE),
    ],
)
def test_what_the_proxy_serves(
    state: State, stage: int, versions: dict[int, str], expected: list[object]
) -> None:
    """Blue alone until green is healthy; green as a mirror in stage 1, bound to the test rules in stage 2,
    alone after the switch; blue again on a rollback from any phase."""
    got = routes(snap(state, versions, stage_index=stage))
    assert served(got) == expected
    assert canary_share(got) in (0.0, 100.0)


def test_share_cohorts_and_notes() -> None:
    """The judge expects a copy of 20 % of blue's requests in the mirror phase, no share in the test (the
    rules decide), all after the switch; green's address is the canary's on every server."""
    assert expected_share(snap(State.MONITORING, GREEN_UP)) == pytest.approx(20 / 120)
    assert expected_share(snap(State.MONITORING, GREEN_UP, stage_index=1)) is None
    assert expected_share(snap(State.PROMOTING, GREEN_UP, stage_index=1)) == 1.0
    assert address_cohorts(snap(State.MONITORING))["10.0.0.2:8001"] == "canary"
    assert address_cohorts(snap(State.MONITORING))["10.0.0.2:8000"] == "stable"
    s = snap(State.MONITORING)
    assert stage_note(s, 0) == "mirror: 20 % of requests copied to the new version (green); clients get blue"
    assert stage_note(s, 1).startswith("blue-green test: requests with header X-Canary = always go to")


def test_from_green_deployed_to_the_switch() -> None:
    """Green starts on green_port beside blue; once all are healthy the mirror phase starts; a passed mirror
    phase advances to the test (routes bound to the rules, in the same tick); a passed test promotes, and
    promoting is blue_green's switch."""
    plan = decide(snap(State.PENDING, canary_ids=()), Observed(), NOW)
    assert plan.change.trigger is Trigger.START and plan.change.canary_ids == (1, 2)
    plan = decide(snap(State.DEPLOYING), Observed(), NOW)
    (deploy,) = plan.effects
    assert isinstance(deploy, DeployServer) and (deploy.port, deploy.record_as) == (8001, green_id(1))
    plan = decide(snap(State.DEPLOYING, GREEN_UP), Observed(), NOW)
    first = plan.effects[0]
    assert plan.change.trigger is Trigger.CANARY_READY
    assert isinstance(first, SetRoutes) and {b.mirror for b in first.backends} == {0, 20}
    assert plan.change.events[-1].reasons[0].startswith("mirror: 20 %")
    later = NOW + timedelta(seconds=31)
    seen = Observed(traffic=TrafficSample(stats(40, 0), stats(200, 0), 7))
    plan = decide(snap(State.MONITORING, GREEN_UP), seen, later)
    assert plan.change.stage is not None and plan.change.stage.index == 1
    test = plan.effects[0]
    assert isinstance(test, SetRoutes) and sum(bool(b.match) for b in test.backends) == 2
    assert not any(b.mirror for b in test.backends)
    assert plan.change.events[0].kind is EventKind.STAGE_ADVANCED
    plan = decide(snap(State.MONITORING, GREEN_UP, stage_index=1), seen, later)
    assert plan.change.trigger is Trigger.PROMOTE
    plan = decide(snap(State.PROMOTING, GREEN_UP, stage_index=1), Observed(), later)
    assert plan.change.switched and plan.change.events[0].kind is EventKind.TRAFFIC_SWITCHED


def test_bad_copies_roll_back_in_the_mirror_phase() -> None:
    """Green answering 30 % of its copies with errors is rolled back in the mirror phase: blue only, in the
    tick that decides it; then every green is stopped; blue was never stopped."""
    seen = Observed(traffic=TrafficSample(stats(40, 12), stats(200, 0), 7))
    plan = decide(snap(State.MONITORING, GREEN_UP), seen, NOW + timedelta(seconds=10))
    assert plan.change.trigger is Trigger.ROLLBACK
    assert any("error_rate" in r for r in plan.change.events[0].reasons)
    cut = plan.effects[0]
    assert isinstance(cut, SetRoutes) and served(cut.backends) == BLUE
    plan = decide(snap(State.ROLLING_BACK, GREEN_UP), Observed(), NOW)
    assert [(e.port, e.record_as) for e in plan.effects if isinstance(e, StopInstance)] == [
        (8001, green_id(1)),
        (8001, green_id(2)),
    ]


@pytest.mark.parametrize("stage", [0, 1])
def test_operator_rollback_and_promote_in_each_phase(stage: int) -> None:
    """A rollback in the mirror phase or the test goes back to blue; a promote in either is the switch."""
    s = snap(State.MONITORING, GREEN_UP, stage_index=stage)
    plan = decide(s, OperatorRequest(OperatorAction.ROLLBACK, "op"), NOW)
    assert plan.change.trigger is Trigger.ROLLBACK
    assert served(routes(replace(s, state=State.ROLLING_BACK))) == BLUE
    plan = decide(s, OperatorRequest(OperatorAction.PROMOTE, "op"), NOW)
    assert plan.change.trigger is Trigger.PROMOTE


@pytest.mark.parametrize(
    ("strategy", "own", "locs"),
    [
        ("mirror", {"mirror": {"percent": 10, "then": "blue_green"}}, []),
        ("mirror", {"mirror": {"percent": 10, "then": "blue_green"}, "blue_green": {"keep_old": 5}}, []),
        (
            "mirror",
            {
                "mirror": {"percent": 10, "then": "blue_green"},
                "stages": [10],
                "canary_server_percentage": 20,
                "approve_before": [100],
                "checks": [{"stages": [100]}],
                "ab": {},
            },
            [
                ("body", "config", "ab"),
                ("body", "config", "stages"),
                ("body", "config", "canary_server_percentage"),
                ("body", "config", "approve_before"),
                ("body", "config", "checks", 0, "stages"),
            ],
        ),
        ("mirror", {"mirror": {"percent": 10}, "blue_green": {}}, [("body", "config", "blue_green")]),
        ("canary", {"blue_green": {}}, [("body", "config", "blue_green")]),
    ],
)
def test_problems(strategy: str, own: dict[str, object], locs: list[tuple[object, ...]]) -> None:
    """blue_green's rules, every problem at once; a blue_green block needs then: blue_green."""
    assert [loc for loc, _ in problems(strategy, own, None)] == locs
    if locs and own.get("stages"):
        said = dict(problems(strategy, own, None))
        assert "a mirror test with then: blue_green" in said[("body", "config", "stages")]
    if strategy == "mirror" and "blue_green" in own and locs:
        said = dict(problems(strategy, own, None))
        assert "mirror with then: blue_green" in said[("body", "config", "blue_green")]
