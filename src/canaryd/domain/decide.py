"""One monitoring check, decided: hold the stage, advance, promote, or roll back. Time is an argument.

- The judge failed the canary: roll back at once, whatever the stage clock says.
- The stage has not run its `stage_duration` yet: hold; check again after `health_check_interval`, or at
  the end of the stage if that comes first.
- The stage has run its time and the judge passed it: advance to the next stage, or promote after the last.
- The stage has run its time but the judge cannot tell yet (too little traffic): hold, and say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from canaryd.domain.judge import Outcome, Verdict


@dataclass(frozen=True, slots=True)
class StageClock:
    """Where a deployment is in its stage plan. `stage_index` counts from 0."""

    stage_index: int
    stages: tuple[float, ...]
    stage_started_at: datetime
    stage_duration: int  # seconds
    health_check_interval: int  # seconds

    @property
    def percentage(self) -> float:
        return self.stages[self.stage_index]

    @property
    def is_last(self) -> bool:
        return self.stage_index == len(self.stages) - 1

    def label(self, index: int | None = None) -> str:
        """ "stage 2 (25 %)": numbered from 1, as people count."""
        i = self.stage_index if index is None else index
        return f"stage {i + 1} ({self.stages[i]:g} %)"


class Action(StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now, when to look again, and why."""

    action: Action
    next_check_at: datetime
    reasons: tuple[str, ...]
    next_stage_index: int | None = None


def stage_ends_at(clock: StageClock) -> datetime:
    """When the current stage has run its full duration."""
    return clock.stage_started_at + timedelta(seconds=clock.stage_duration)


def decide(clock: StageClock, verdict: Verdict, now: datetime) -> Decision:
    """The decision of one monitoring check (see the module docstring for the rules)."""
    if not 0 <= clock.stage_index < len(clock.stages):
        raise ValueError(f"stage index {clock.stage_index} is outside the plan of {len(clock.stages)} stages")
    if clock.health_check_interval < 1:
        raise ValueError("health_check_interval must be at least 1 second")
    interval = timedelta(seconds=clock.health_check_interval)
    ends = stage_ends_at(clock)
    here = clock.label()

    if verdict.outcome is Outcome.FAIL:
        return Decision(Action.ROLLBACK, now, verdict.reasons)

    if now < ends:
        elapsed = max(0, int((now - clock.stage_started_at).total_seconds()))
        progress = f"{here}: {elapsed} of {clock.stage_duration} s elapsed"
        return Decision(Action.HOLD, min(now + interval, ends), (progress, *verdict.reasons))

    if verdict.outcome is Outcome.PASS:
        if clock.is_last:
            return Decision(Action.PROMOTE, now, (f"last {here} passed", *verdict.reasons))
        nxt = clock.stage_index + 1
        reason = f"{here} passed; next {clock.label(nxt)}"
        return Decision(Action.ADVANCE, now + interval, (reason, *verdict.reasons), nxt)

    return Decision(Action.HOLD, now + interval, (f"{here} held: {'; '.join(verdict.reasons)}",))


__all__ = ["Action", "Decision", "StageClock", "decide", "stage_ends_at"]
