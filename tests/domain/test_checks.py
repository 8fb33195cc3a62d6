"""Webhook checks in the pure core: their settings' validation, what a refusal leads to, how answers and
secrets are shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from canaryd.domain.checks import gated, redacted, refused, shown
from canaryd.domain.config import CanaryConfig
from canaryd.domain.plan import (
    CallCheck,
    CheckProgress,
    CheckRefused,
    Plan,
    ServerRef,
    SetRoutes,
    Snapshot,
    Trigger,
)
from canaryd.domain.types import State

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def config(*checks: dict[str, Any], **more: Any) -> CanaryConfig:
    return CanaryConfig.model_validate(
        {"stages": [10, 50, 100], "stage_duration": 60, "checks": list(checks), **more}
    )


def spec(name: str = "gate", point: str = "pre_stage", **more: Any) -> dict[str, Any]:
    return {"name": name, "point": point, "url": "http://127.0.0.1:9/x", **more}


def snapshot(cfg: CanaryConfig, progress: CheckProgress | None = None) -> Snapshot:
    servers = tuple(ServerRef(i, f"s{i}", f"10.0.0.{i}") for i in (1, 2, 3))
    return Snapshot(
        1, 1, State.MONITORING, None, "v2", "v1", cfg, servers, 8000, 1000, canary_ids=(1,),
        stage_started_at=NOW, checks=progress or CheckProgress(),
    )  # fmt: skip


def test_every_problem_of_the_checks_is_listed_at_once() -> None:
    """Bad checks get one error listing every problem, none of them echoing the secret."""
    with pytest.raises(ValidationError) as info:
        config(
            spec("a", "post_rollback", failure_action="rollback", secret="[redacted]"),
            spec("a", "pre_promote", stages=[50]),
            spec("b", "during_stage", failure_action="hold"),
            spec("c", "pre_stage", stages=[30], url="ftp://x", timeout=100),
            spec("d", "during_stage", timeout=30, retries=3),
        )
    text = str(info.value)
    for words in (
        "post_rollback check can only be ignored",
        "must be printable text other than",
        "stages applies to pre_stage and during_stage checks only",
        "during_stage check cannot hold",
        "must be an http:// or https:// URL",
        "less than or equal to 30",
        "tried within one tick",
    ):
        assert words in text, words
    # Once every check is valid on its own, the checks are compared with each other and with the stages.
    with pytest.raises(ValidationError) as plan:
        config(spec("c", stages=[30]), spec("c"))
    assert "which is not a stage" in str(plan.value) and "repeated: c" in str(plan.value)
    with pytest.raises(ValidationError) as short:
        config(spec(secret="tiny-pw"))
    assert all("tiny-pw" not in e["msg"] for e in short.value.errors())  # the API shows msg and loc only


@pytest.mark.parametrize(
    ("settings", "progress", "tries", "expected"),
    [
        ({}, None, 1, "hold"),  # default: hold at a gate, retries 3
        ({"retries": 0, "failure_action": "rollback"}, None, 1, "rollback"),
        ({"retries": 1, "failure_action": "rollback"}, None, 1, "hold"),
        ({"retries": 1, "failure_action": "rollback"}, 1, 2, "rollback"),
        ({"retries": 1, "failure_action": "pause"}, 1, 2, "pause"),
        ({"retries": 1, "failure_action": "ignore"}, 1, 2, "ignore"),
        ({"retries": 0, "failure_action": "hold"}, 5, 6, "hold"),  # hold: keeps holding and trying
        ({"retries": 50, "retry_timeout": 30, "failure_action": "rollback"}, 2, 3, "rollback"),
    ],
)
def test_a_refusal_holds_then_applies_the_failure_action(
    settings: dict[str, Any], progress: int | None, tries: int, expected: str
) -> None:
    """Refusals hold and are counted per gate and check; once the retries (or retry_timeout) are used up, the
    failure action applies."""
    cfg = config(spec(**settings))
    earlier = (
        CheckProgress("pre_stage:2", "gate", progress, NOW - timedelta(seconds=40)) if progress else None
    )
    s = snapshot(cfg, earlier)
    plan = refused(
        s, CheckRefused(cfg.checks[0], "pre_stage:2", "before stage 2 (50 %)", "HTTP 503: busy"), NOW
    )
    trigger = {"rollback": Trigger.ROLLBACK, "pause": Trigger.PAUSE}.get(expected)
    assert plan.change.trigger is trigger
    assert plan.change.reasons is not None
    assert plan.change.reasons[0] == "before stage 2 (50 %): check gate refused: HTTP 503: busy"
    assert plan.facts.checks is not None
    if expected == "hold":
        assert plan.facts.checks.tries == tries and plan.change.next_tick_in == 10
    if expected == "ignore":
        assert plan.facts.checks.waived == ("gate",) and plan.change.next_tick_in == 0


def test_a_gate_puts_its_checks_first_and_skips_waived_ones() -> None:
    """The checks of a gate come before the plan's effects, in order; waived ones are skipped."""
    cfg = config(spec("a"), spec("b"), spec("c", stages=[100]), spec("d", "pre_promote"))
    plan = Plan((SetRoutes(()),))
    effects = gated(snapshot(cfg), "pre_stage", 1, plan).effects
    assert [type(e).__name__ for e in effects] == ["CallCheck", "CallCheck", "SetRoutes"]
    first = effects[0]
    assert isinstance(first, CallCheck) and (first.check.name, first.stage, first.percentage) == ("a", 2, 50)
    waived = snapshot(cfg, CheckProgress("pre_stage:2", waived=("a",)))
    assert [
        e.check.name for e in gated(waived, "pre_stage", 1, plan).effects if isinstance(e, CallCheck)
    ] == ["b"]
    assert gated(snapshot(config()), "pre_stage", 1, plan) is plan


def test_answers_are_shown_short_and_on_one_line() -> None:
    """Control characters and newlines go, and at most 200 characters are shown."""
    assert shown(b"busy\r\n\x1b[31mred\x00") == "busy [31mred"
    assert shown("x" * 500).endswith("…") and len(shown("x" * 500)) == 200
    assert shown(b"\xff\xfe") == "\ufffd\ufffd"


def test_secrets_are_redacted() -> None:
    """Only the secret changes; a check without one is left as it was."""
    cfg = {
        "stages": [10],
        "checks": [{"name": "a", "secret": "hunter2hunter2"}, {"name": "b", "secret": None}],
    }
    shown_cfg = redacted(cfg)
    assert shown_cfg["checks"] == [{"name": "a", "secret": "[redacted]"}, {"name": "b", "secret": None}]
    assert cfg["checks"][0]["secret"] == "hunter2hunter2"  # type: ignore[index]
