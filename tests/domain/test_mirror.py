"""Strategy `mirror` in the pure core: its stage plan, what the proxy serves in each state (the canaries
only ever as mirrors during the mirror phase), the share the judge may expect, its history notes, its
settings' problems, and a passed `then: stop` test ending without promoting."""

from __future__ import annotations

import pytest

from canaryd.domain.config import CanaryConfig
from canaryd.domain.pool import PoolServer
from canaryd.domain.routing import canary_share
from canaryd.domain.strategy import Mirror, problems, stops_after_test, strategy_for
from canaryd.domain.types import Backend, State, mirror_percent, split_pool

THEN_CANARY = Mirror().effective(
    CanaryConfig.model_validate({"mirror": {"percent": 20}, "stages": [10, 50, 100]})
)
THEN_STOP = Mirror().effective(CanaryConfig.model_validate({"mirror": {"percent": 5, "then": "stop"}}))
#: Servers 1 and 2 canaries (2 not yet at v2), 3-5 stable.
POOL = [PoolServer(1, "10.0.0.1", 80, "v2"), PoolServer(2, "10.0.0.2", 80, "v1")] + [
    PoolServer(i, f"10.0.0.{i}", 80, "v1") for i in (3, 4, 5)
]
CANARIES = frozenset({1, 2})


def serve(config: CanaryConfig, state: State, stage: int) -> tuple[Backend, ...]:
    return Mirror().backends(config, state, POOL, CANARIES, "v2", config.stages[stage], None, 1000)


def test_stage_plans() -> None:
    """then: canary puts the mirror phase before the canary's stages (at half the first one: the plan stays
    increasing, and no split is made of that value); then: stop has the mirror phase alone."""
    assert THEN_CANARY.stages == [5.0, 10.0, 50.0, 100.0]
    assert THEN_STOP.stages == [100.0]
    assert strategy_for("mirror").effective(CanaryConfig.model_validate({"ab": None})).mirror is None


@pytest.mark.parametrize("config", [THEN_CANARY, THEN_STOP], ids=["then-canary", "then-stop"])
@pytest.mark.parametrize("state", [State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED])
def test_mirror_phase_serves_stable_and_copies_to_ready_canaries(config: CanaryConfig, state: State) -> None:
    """While the mirror phase is tested: every stable server takes the live requests; only the canary that
    runs the new version gets copies; the live split gives the canary nothing."""
    routed = serve(config, state, 0)
    assert [(b.server_id, b.cohort, b.mirror) for b in routed] == [
        (1, "canary", config.mirror.percent if config.mirror else 0),
        (3, "stable", 0),
        (4, "stable", 0),
        (5, "stable", 0),
    ]
    assert [b.server_id for b in split_pool(routed)] == [3, 4, 5]
    assert canary_share(routed) == 0.0 and mirror_percent(routed) == (
        config.mirror.percent if config.mirror else 0
    )


@pytest.mark.parametrize(
    ("state", "stage", "live_canary"),
    [
        (State.DEPLOYING, 0, False),
        (State.MONITORING, 1, True),  # then: canary, its first canary stage: a split, no mirror
        (State.PROMOTING, 3, True),
        (State.ROLLING_BACK, 0, False),
    ],
)
def test_other_states_are_a_canarys(state: State, stage: int, live_canary: bool) -> None:
    routed = serve(THEN_CANARY, state, stage)
    assert not any(b.mirror for b in routed)
    assert any(b.cohort == "canary" for b in routed) is live_canary


def test_expected_share_and_notes() -> None:
    """The judge may expect a copy of percent % of stable's requests: percent / (100 + percent) of all
    logged lines; after the mirror phase, the split's share."""
    mirror = Mirror()
    assert mirror.expected_share(serve(THEN_CANARY, State.MONITORING, 0)) == pytest.approx(20 / 120)
    assert mirror.expected_share(serve(THEN_STOP, State.MONITORING, 0)) == pytest.approx(5 / 105)
    assert mirror.expected_share(serve(THEN_CANARY, State.MONITORING, 1)) == pytest.approx(0.1, abs=0.01)
    assert (
        mirror.stage_note(THEN_CANARY, 0)
        == "mirror: 20 % of requests copied to the canary; clients get stable"
    )
    assert mirror.stage_note(THEN_CANARY, 1) == "stage 1 of 3: 10 %"
    assert mirror.stage_note(THEN_CANARY, 3) == "stage 3 of 3: 100 %"
    assert (
        mirror.stage_note(THEN_STOP, 0) == "mirror: 5 % of requests copied to the canary; clients get stable"
    )


def test_backend_json_keeps_the_mirror() -> None:
    b = Backend(1, "10.0.0.1", 80, 1, "canary", (), 30)
    assert b.to_json()["mirror"] == 30 and Backend.from_json(b.to_json()) == b
    plain = Backend(2, "10.0.0.2", 80, 1, "stable")
    assert "mirror" not in plain.to_json() and Backend.from_json(plain.to_json()) == plain


@pytest.mark.parametrize(
    ("strategy", "own", "locs"),
    [
        ("mirror", {"mirror": {"percent": 10}}, []),
        ("mirror", {"mirror": {"percent": 10}, "stages": [10, 100], "approve_before": [100]}, []),
        ("mirror", {}, [("body", "config", "mirror")]),
        ("mirror", {"mirror": {"percent": 10}, "ab": {"match": []}}, [("body", "config", "ab")]),
        (
            "mirror",
            {"mirror": {"percent": 10, "then": "stop"}, "stages": [10], "approve_before": [10]},
            [("body", "config", "stages"), ("body", "config", "approve_before")],
        ),
        (
            "mirror",
            {"mirror": {"percent": 10, "then": "stop"}, "checks": [{"stages": [10]}, {}]},
            [("body", "config", "checks", 0, "stages")],
        ),
        ("canary", {"mirror": {"percent": 10}}, [("body", "config", "mirror")]),
        ("mirror", {"mirror": 5, "stages": [10]}, []),  # not an object: the schema says so
        ("mirror", {"mirror": {"then": "stop"}, "stages": [10]}, [("body", "config", "stages")]),
        ("ab", {"mirror": {"percent": 10}, "ab": {}}, [("body", "config", "mirror")]),
    ],
)
def test_problems_from_the_raw_body(
    strategy: str, own: dict[str, object], locs: list[tuple[object, ...]]
) -> None:
    """Read from the request as sent (the settings are not known yet), every problem at once."""
    assert [loc for loc, _ in problems(strategy, own, None)] == locs


def test_problems_from_the_effective_settings() -> None:
    """An application's default mirror block counts; a canary deployment that inherits one is fine."""
    inherited = CanaryConfig.model_validate({"mirror": {"percent": 10}})
    assert problems("mirror", {}, inherited) == []
    assert problems("canary", {}, inherited) == []
    assert [loc for loc, _ in problems("mirror", {}, CanaryConfig())] == [("body", "config", "mirror")]


def test_only_then_stop_ends_without_promoting() -> None:
    assert stops_after_test("mirror", THEN_STOP)
    assert not stops_after_test("mirror", THEN_CANARY)
    assert not stops_after_test("canary", THEN_STOP)
