"""Strategy `rolling` in the pure core: batch sizes and stages, which batch the proxy keeps out in each
state, the decisions at each phase, and the strategy's settings problems."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from canaryd.domain import batches
from canaryd.domain.config import CanaryConfig, RollingSettings
from canaryd.domain.plan import (
    UNKNOWN_VERSION,
    ActionRefused,
    DeployServer,
    EventKind,
    MarkTrafficStart,
    Observed,
    OperatorAction,
    OperatorRequest,
    ServerRef,
    SetRoutes,
    Snapshot,
)
from canaryd.domain.rollout import decide, needs_of
from canaryd.domain.routing import canary_share, expected_share, routes
from canaryd.domain.strategy import (
    Rolling,
    batch_sizes,
    problems,
    rolling_feasibility,
    rolling_stages,
)
from canaryd.domain.types import HostLoad, State

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("settings", "servers", "sizes", "stages"),
    [
        ({"batch_size": 2}, 5, (2, 2, 1), [40.0, 80.0, 100.0]),
        ({"batch_size": 1}, 3, (1, 1, 1), [33.333, 66.667, 100.0]),
        ({"batch_size": 4}, 4, (4,), [100.0]),  # refused by rolling_feasibility, below
        ({"batch_percent": 50}, 4, (2, 2), [50.0, 100.0]),
        ({"batch_percent": 30}, 10, (3, 3, 3, 1), [30.0, 60.0, 90.0, 100.0]),
        ({"batch_percent": 10}, 4, (1, 1, 1, 1), [25.0, 50.0, 75.0, 100.0]),  # rounded down, at least 1
        ({}, 8, (2, 2, 2, 2), [25.0, 50.0, 75.0, 100.0]),  # default 25 %
        ({}, 2, (1, 1), [50.0, 100.0]),
    ],
)
def test_batches_and_their_stages(
    settings: dict[str, Any], servers: int, sizes: tuple[int, ...], stages: list[float]
) -> None:
    rolling = RollingSettings.model_validate(settings)
    assert batch_sizes(rolling, servers) == sizes
    config = rolling_stages(CanaryConfig.model_validate({"rolling": settings}), servers)
    assert config.stages == stages and config.rolling == rolling


@pytest.mark.parametrize(
    ("settings", "servers", "words"),
    [
        ({"batch_size": 4}, 4, "rolling.batch_size 4 would drain every server of the application (it has 4)"),
        ({"batch_size": 9}, 4, "at most 3"),
        ({}, 1, "a rolling update needs at least 2 servers (the application has 1)"),
        ({"batch_percent": 99}, 2, None),
        ({"batch_size": 3}, 4, None),
    ],
)
def test_feasibility(settings: dict[str, Any], servers: int, words: str | None) -> None:
    found = rolling_feasibility(RollingSettings.model_validate(settings), servers)
    assert (words is None and found == []) or (words is not None and words in found[0]), found


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"batch_size": 1, "batch_percent": 10}, "batch_size or batch_percent, not both"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"batch_percent": 100}, "less than 100"),
        ({"batch_percent": 0}, "greater than 0"),
        ({"batch": 2}, "Extra inputs are not permitted"),
    ],
)
def test_settings_refused(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        CanaryConfig.model_validate({"rolling": settings})


def test_every_problem_of_a_rolling_request_is_listed() -> None:
    own = {
        "stages": [10, 100],
        "canary_server_percentage": 30,
        "approve_before": [100],
        "ab": {"match": []},
        "checks": [{"name": "c", "point": "pre_stage", "url": "http://x", "stages": [10]}],
    }
    found = dict(problems("rolling", own, None))
    assert set(found) == {
        ("body", "config", "stages"),
        ("body", "config", "canary_server_percentage"),
        ("body", "config", "approve_before"),
        ("body", "config", "ab"),
        ("body", "config", "checks", 0, "stages"),
    }
    assert "stages are its batches" in found[("body", "config", "stages")]
    assert "rolling.batch_size" in found[("body", "config", "canary_server_percentage")]
    assert problems("rolling", {"rolling": {"batch_size": 2}, "stage_duration": 60}, None) == []


@pytest.mark.parametrize("strategy", ["canary", "ab"])
def test_rolling_settings_belong_to_rolling(strategy: str) -> None:
    found = problems(strategy, {"rolling": {"batch_size": 1}}, None)
    assert (
        ("body", "config", "rolling"),
        f"rolling settings apply to strategy rolling only, not {strategy}",
    ) in found


def test_canary_ignores_the_applications_rolling_defaults() -> None:
    config = CanaryConfig.model_validate({"rolling": {"batch_size": 2}})
    from canaryd.domain.strategy import Canary

    assert Canary().effective(config).rolling is None
    assert Rolling().effective(CanaryConfig()).rolling == RollingSettings()


# --- snapshots ---------------------------------------------------------------------------------------------

CONFIG = rolling_stages(
    CanaryConfig.model_validate(
        {"rolling": {"batch_size": 2}, "stage_duration": 60, "health_check_interval": 10}
    ),
    5,
)
SERVERS = tuple(ServerRef(i, f"web-{i}", f"10.0.0.{i}") for i in range(1, 6))


def snap(
    state: State,
    canary_ids: tuple[int, ...] = (),
    upgraded: tuple[int, ...] = (),
    stage: int = 0,
    paused_from: State | None = None,
    **more: Any,
) -> Snapshot:
    versions = {sid: ("v2" if sid in upgraded else "v1") for sid in range(1, 6)}
    return Snapshot(
        1, 1, state, paused_from, "v2", "v1", CONFIG, SERVERS, 8000, 1000, canary_ids=canary_ids,
        versions={**versions, **more.pop("versions", {})}, stage_index=stage, stage_started_at=NOW,
        strategy="rolling", **more,
    )  # fmt: skip


def served(s: Snapshot, state: State | None = None) -> list[tuple[int, int, str]]:
    return [(b.server_id, b.weight, b.cohort) for b in routes(s, state)]


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        # batch 1 being deployed: all of it out, even the server already upgraded
        (snap(State.DEPLOYING, (2, 4), (2,)), [(1, 1, "stable"), (3, 1, "stable"), (5, 1, "stable")]),
        # batch 1 judged: every server at weight 1
        (
            snap(State.MONITORING, (2, 4), (2, 4)),
            [(1, 1, "stable"), (2, 1, "canary"), (3, 1, "stable"), (4, 1, "canary"), (5, 1, "stable")],
        ),
        # batch 2 (web-1, web-3) being deployed, web-1 done: both out until both are healthy
        (
            snap(State.MONITORING, (2, 4, 1, 3), (2, 4, 1)),
            [(2, 1, "canary"), (4, 1, "canary"), (5, 1, "stable")],
        ),
        # paused while batch 2 is deployed: still out
        (
            snap(State.PAUSED, (2, 4, 1, 3), (2, 4, 1), paused_from=State.MONITORING),
            [(2, 1, "canary"), (4, 1, "canary"), (5, 1, "stable")],
        ),
        # paused while batch 1 is deployed
        (
            snap(State.PAUSED, (2, 4), (2,), paused_from=State.DEPLOYING),
            [(1, 1, "stable"), (3, 1, "stable"), (5, 1, "stable")],
        ),
        # a crash left web-3's version unknown: out as well
        (
            snap(State.MONITORING, (2, 4, 1, 3), (2, 4, 1), versions={3: UNKNOWN_VERSION}),
            [(2, 1, "canary"), (4, 1, "canary"), (5, 1, "stable")],
        ),
        # the last batch judged: only upgraded servers
        (
            snap(State.MONITORING, (2, 4, 1, 3, 5), (1, 2, 3, 4, 5), stage=2),
            [(i, 1, "canary") for i in range(1, 6)],
        ),
        # rolling back: the upgraded servers are cut first
        (snap(State.ROLLING_BACK, (2, 4, 1, 3), (2, 4, 1, 3)), [(5, 1, "stable")]),
    ],
)
def test_what_the_proxy_serves(s: Snapshot, expected: list[tuple[int, int, str]]) -> None:
    assert served(s) == expected
    assert len(SERVERS) - len(expected) <= 4  # never empty


def test_the_judge_expects_the_upgraded_servers_share() -> None:
    s = snap(State.MONITORING, (2, 4), (2, 4))
    assert expected_share(s) == pytest.approx(0.4) and canary_share(routes(s)) == 40.0


def test_batch_servers_and_notes() -> None:
    s = snap(State.MONITORING, (2, 4), (2, 4))
    assert [batches.servers_of(s, i) for i in range(3)] == [(2, 4), (1, 3), (5,)]
    assert batches.note(s, 1) == "batch 2 of 3: servers web-1, web-3"
    assert batches.in_progress(s) == ()
    assert batches.in_progress(snap(State.MONITORING, (2, 4, 1, 3), (2, 4))) == (1, 3)


def test_pending_chooses_the_least_loaded_batch() -> None:
    loads = {
        1: HostLoad(90, 10),
        2: HostLoad(5, 5),
        3: HostLoad(50, 5),
        4: HostLoad(10, 10),
        5: HostLoad(None, None),
    }
    plan = decide(snap(State.PENDING), Observed(host_loads=loads), NOW)
    assert plan.change.canary_ids == (2, 4)
    assert plan.change.events[0].kind is EventKind.DEPLOY_STARTED
    assert (
        "batch 1 of 3: servers web-2, web-4 (least loaded of 5); 2 server(s) at a time"
        in plan.change.events[0].reasons
    )


def test_a_passed_stage_drains_the_next_batch() -> None:
    """The stage passed (threshold judge, enough requests, stage over): the next batch joins and is
    drained in the same tick; the stage index stays until it is back."""
    from canaryd.domain.plan import TrafficSample
    from canaryd.domain.types import CohortStats

    config = CONFIG.model_copy(update={"judge": "threshold", "min_requests": 5})
    s = replace(
        snap(State.MONITORING, (2, 4), (2, 4)),
        config=config,
        stage_started_at=datetime(2025, 12, 31, tzinfo=UTC),
    )
    ok = CohortStats()
    for _ in range(100):
        ok.record(200, 5.0)
    plan = decide(s, Observed(traffic=TrafficSample(ok, ok, 10)), NOW)
    assert plan.change.canary_ids == (2, 4, 1, 3) and plan.change.stage is None
    assert isinstance(plan.effects[0], SetRoutes)
    assert [b.server_id for b in plan.effects[0].backends] == [2, 4, 5]
    event = plan.change.events[0]
    assert event.kind is EventKind.DEPLOY_STARTED and event.stage == 2
    assert event.reasons[-1] == "batch 2 of 3: servers web-1, web-3: drained, then deployed"


def test_a_batch_in_progress_is_deployed_then_returned() -> None:
    s = snap(State.MONITORING, (2, 4, 1, 3), (2, 4))
    assert needs_of(s, NOW).traffic is False and needs_of(s, NOW).health == ()
    first = decide(s, Observed(), NOW)
    assert [type(e) for e in first.effects] == [DeployServer] and first.effects[0].server_id == 1  # type: ignore[union-attr]
    assert first.change.reasons == ("batch 2 of 3: servers web-1, web-3: deploying web-1",)
    done = decide(snap(State.MONITORING, (2, 4, 1, 3), (2, 4, 1, 3)), Observed(), NOW)
    assert [type(e) for e in done.effects] == [SetRoutes, MarkTrafficStart]
    assert [b.weight for b in done.effects[0].backends] == [1] * 5  # type: ignore[union-attr]
    assert done.change.stage is not None and done.change.stage.index == 1 and done.change.stage.at is None
    kinds = [(e.kind, e.stage, e.traffic_percentage) for e in done.change.events]
    assert kinds == [(EventKind.CANARY_DEPLOYED, 2, 80.0), (EventKind.STAGE_ADVANCED, 2, 80.0)]
    assert done.change.events[0].reasons == ("batch 2 of 3 healthy: web-1, web-3",)


@pytest.mark.parametrize(
    ("s", "words"),
    [
        (snap(State.MONITORING, (2, 4, 1, 3), (2, 4)), "cannot start the next batch while batch 2 of 3"),
        (
            snap(State.PAUSED, (2, 4), (2, 4), paused_from=State.MONITORING),
            "paused rolling update starts no batch",
        ),
        (
            snap(State.DEPLOYING, (2, 4), ()),
            "cannot promote to the next stage of a deployment that is deploying",
        ),
    ],
)
def test_promote_to_next_refused(s: Snapshot, words: str) -> None:
    with pytest.raises(ActionRefused, match=words):
        decide(s, OperatorRequest(OperatorAction.PROMOTE, "op", to_next=True), NOW)


def test_promote_to_next_starts_the_next_batch() -> None:
    plan = decide(
        snap(State.MONITORING, (2, 4), (2, 4)),
        OperatorRequest(OperatorAction.PROMOTE, "op", to_next=True),
        NOW,
    )
    assert plan.change.canary_ids == (2, 4, 1, 3) and plan.change.trigger is None
    assert plan.change.stage is not None and plan.change.stage.index == 0  # the batch's stage starts later
    last = snap(State.MONITORING, (2, 4, 1, 3, 5), (1, 2, 3, 4, 5), stage=2)
    promoted = decide(last, OperatorRequest(OperatorAction.PROMOTE, "op", to_next=True), NOW)
    assert promoted.change.trigger is not None and promoted.change.trigger.value == "promote"


SIZES = (2, 2, 1)  # 5 servers, 2 at a time


@pytest.mark.parametrize(
    ("state", "paused_from", "stage", "started", "expected"),
    [
        (State.PENDING, None, 0, 0, ("to come", "to come", "to come")),
        (State.DEPLOYING, None, 0, 2, ("deploying", "to come", "to come")),
        (State.PAUSED, State.DEPLOYING, 0, 2, ("deploying", "to come", "to come")),
        (State.MONITORING, None, 0, 2, ("judged", "to come", "to come")),
        # Batch 1 passed, batch 2 drained and being deployed (the stage stays 1 until it is back).
        (State.MONITORING, None, 0, 4, ("upgraded", "deploying", "to come")),
        (State.PAUSED, State.MONITORING, 1, 4, ("upgraded", "judged", "to come")),
        (State.WAITING_FOR_APPROVAL, None, 2, 5, ("upgraded", "upgraded", "judged")),
        (State.PROMOTING, None, 0, 2, ("upgraded", "upgrading", "upgrading")),
        (State.COMPLETED, None, 2, 5, ("upgraded", "upgraded", "upgraded")),
        (State.ROLLING_BACK, None, 1, 4, ("rolled back", "rolled back", "not run")),
        (State.ROLLED_BACK, None, 0, 2, ("rolled back", "not run", "not run")),
    ],
)
def test_where_each_batch_stands(
    state: State, paused_from: State | None, stage: int, started: int, expected: tuple[str, ...]
) -> None:
    """The status's (and the console's) batches: which are upgraded, which one is judged or deployed."""
    assert batches.progress(state, paused_from, stage, started, SIZES) == expected
