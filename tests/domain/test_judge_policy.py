"""What an inconclusive or failing verdict leads to under the policy: extension, then pause/rollback/proceed; observe-only analysis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from canaryd.domain.decide import Action, Policy, StageClock, decide
from canaryd.domain.judge import Outcome, Verdict

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
STAGES = (10.0, 50.0, 100.0)
WAIT = Verdict(Outcome.INCONCLUSIVE, (), ("error_rate: canary has 37 of the ~400 requests needed",))
FAIL = Verdict(Outcome.FAIL, (), ("error_rate: canary errors 18/60 (30.0 %) vs stable 0/60 (0.0 %); e=900",))
PASS = Verdict(Outcome.PASS, (), ("error_rate: enough traffic",))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def clock(index: int = 0) -> StageClock:
    """A 300 s stage started at T0, checked every 10 s."""
    return StageClock(index, STAGES, T0, 300, 10)


@pytest.mark.parametrize(
    ("index", "action", "now", "expected", "reason"),
    [
        # held past the stage's end while the extension lasts, next check no later than its end
        (0, "pause", 310, Action.HOLD, "stage 1 (10 %) held 10 of at most 600 s for evidence"),
        (0, "pause", 895, Action.HOLD, "stage 1 (10 %) held 595 of at most 600 s"),
        # then the configured action
        (0, "pause", 900, Action.PAUSE, "stage 1 (10 %) still inconclusive 600 s after its end: pausing for a person"),
        (0, "rollback", 900, Action.ROLLBACK, "stage 1 (10 %) still inconclusive 600 s after its end: rolling back"),
        (0, "proceed", 900, Action.ADVANCE, "stage 1 (10 %) still inconclusive 600 s after its end: proceeding"),
        # "proceed" never promotes without evidence, nor sends all traffic (waits 10 timeouts before 100 %)
        (2, "proceed", 900, Action.PAUSE, "stage 3 (100 %) still inconclusive 600 s after its end: not promoting"),
        (1, "proceed", 900, Action.HOLD, "stage 2 (50 %) held 600 of at most 6000 s for evidence"),
        (1, "proceed", 6300, Action.PAUSE,
         "stage 2 (50 %) still inconclusive 6000 s after its end: not sending all traffic to the canary"),
    ],
)  # fmt: skip
def test_inconclusive_extension_then_action(
    index: int, action: str, now: float, expected: Action, reason: str
) -> None:
    """An inconclusive stage waits up to the timeout, then does what the policy says, saying why."""
    policy = Policy(600, action, False)  # type: ignore[arg-type]
    decision = decide(clock(index), WAIT, at(now), policy)
    assert decision.action is expected
    assert decision.reasons[0].startswith(reason), decision.reasons
    assert "canary has 37 of the ~400 requests needed" in " ".join(decision.reasons)
    if expected is Action.HOLD:
        assert decision.next_check_at <= at(300 + 600 * (10 if index == 1 else 1))
    if expected is Action.ADVANCE:
        assert decision.next_stage_index == index + 1


def test_without_policy_inconclusive_holds_forever() -> None:
    """The old behaviour stays available: no policy, no limit."""
    assert decide(clock(), WAIT, at(100_000)).action is Action.HOLD


def test_failure_still_rolls_back_at_once() -> None:
    """A policy changes nothing about failures: roll back in the first second."""
    assert decide(clock(), FAIL, at(1), Policy()).action is Action.ROLLBACK


@pytest.mark.parametrize(
    ("verdict", "now", "index", "action", "would", "reason"),
    [
        (FAIL, 1, 0, Action.HOLD, Action.ROLLBACK, "observe only: would roll back: error_rate: canary errors 18/60"),
        (FAIL, 300, 0, Action.ADVANCE, Action.ROLLBACK, "observe only: would roll back: error_rate"),
        (WAIT, 300, 0, Action.ADVANCE, Action.HOLD, "observe only: cannot tell yet: error_rate: canary has 37"),
        (WAIT, 300, 2, Action.PROMOTE, Action.HOLD, "observe only: cannot tell yet"),
        (PASS, 300, 1, Action.ADVANCE, None, "error_rate: enough traffic"),
    ],
)  # fmt: skip
def test_observe_only_records_but_never_acts(
    verdict: Verdict, now: float, index: int, action: Action, would: Action | None, reason: str
) -> None:
    """analysis: observe: stages advance on time as if passed, never roll back; what the judge would do is recorded."""
    decision = decide(clock(index), verdict, at(now), Policy(observe_only=True))
    assert decision.action is action and decision.would is would
    assert any(r.startswith(reason) for r in decision.reasons), decision.reasons
