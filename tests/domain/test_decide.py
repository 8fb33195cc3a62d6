"""One monitoring check decided from the stage clock, the verdict and the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from canaryd.domain.decide import Action, StageClock, decide, stage_ends_at
from canaryd.domain.judge import Outcome, Verdict

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
STAGES = (10.0, 25.0, 50.0, 75.0, 100.0)


def clock(index: int = 1, duration: int = 300, interval: int = 10) -> StageClock:
    """Stage `index` of the default plan, started at T0."""
    return StageClock(index, STAGES, T0, duration, interval)


def verdict(outcome: Outcome, *reasons: str) -> Verdict:
    return Verdict(outcome, (), reasons or (f"judge says {outcome}",))


PASS = verdict(Outcome.PASS, "canary within limits")
FAIL = verdict(Outcome.FAIL, "error_rate: canary 30.1 % vs stable 0.2 % (+29.9 pp, limit +5.0 pp)")
WAIT = verdict(Outcome.INCONCLUSIVE, "canary has 7 of the 20 requests needed")


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("clk", "v", "now", "action", "next_check", "next_stage"),
    [
        # a failure rolls back at once, even in the first second of a stage
        (clock(), FAIL, s(1), Action.ROLLBACK, s(1), None),
        (clock(), FAIL, s(900), Action.ROLLBACK, s(900), None),
        # within the stage: hold, next check after the interval ...
        (clock(), PASS, s(0), Action.HOLD, s(10), None),
        (clock(), WAIT, s(100), Action.HOLD, s(110), None),
        # ... or at the stage end if that comes first
        (clock(), PASS, s(295), Action.HOLD, s(300), None),
        (clock(interval=60), PASS, s(299), Action.HOLD, s(300), None),
        # the stage has run its time and passed: advance
        (clock(), PASS, s(300), Action.ADVANCE, s(310), 2),
        (clock(0), PASS, s(301), Action.ADVANCE, s(311), 1),
        # the last stage passed: promote
        (clock(4), PASS, s(300), Action.PROMOTE, s(300), None),
        # elapsed but inconclusive: hold and check again
        (clock(), WAIT, s(300), Action.HOLD, s(310), None),
        (clock(4), WAIT, s(5000), Action.HOLD, s(5010), None),
    ],
)
def test_decide_table(
    clk: StageClock,
    v: Verdict,
    now: datetime,
    action: Action,
    next_check: datetime,
    next_stage: int | None,
) -> None:
    """The action, the time of the next check and the next stage follow from clock, verdict and time."""
    decision = decide(clk, v, now)
    assert (decision.action, decision.next_check_at, decision.next_stage_index) == (
        action,
        next_check,
        next_stage,
    )


def test_rollback_carries_the_judge_reasons() -> None:
    """A rollback's reasons are the verdict's reasons, unchanged."""
    assert decide(clock(), FAIL, s(5)).reasons == FAIL.reasons


def test_inconclusive_hold_says_why() -> None:
    """An elapsed stage held for lack of data names the stage and what the judge waits for."""
    decision = decide(clock(), WAIT, s(400))
    assert decision.reasons == ("stage 2 (25 %) held: canary has 7 of the 20 requests needed",)


@pytest.mark.parametrize(
    ("clk", "v", "now", "first_reason"),
    [
        (clock(), PASS, s(120), "stage 2 (25 %): 120 of 300 s elapsed"),
        (clock(), PASS, s(300), "stage 2 (25 %) passed; next stage 3 (50 %)"),
        (clock(4), PASS, s(300), "last stage 5 (100 %) passed"),
    ],
)
def test_reasons(clk: StageClock, v: Verdict, now: datetime, first_reason: str) -> None:
    """Every decision explains itself, first in terms of the stage plan."""
    assert decide(clk, v, now).reasons[0] == first_reason


def test_stage_ends_at() -> None:
    """A stage ends stage_duration seconds after it started."""
    assert stage_ends_at(clock(duration=60)) == s(60)


@pytest.mark.parametrize("index", [-1, 5])
def test_stage_index_out_of_plan(index: int) -> None:
    """A stage index outside the plan is a caller error."""
    with pytest.raises(ValueError, match="outside the plan"):
        decide(clock(index), PASS, s(0))
