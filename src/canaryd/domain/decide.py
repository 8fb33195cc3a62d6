"""One monitoring check, decided: hold the stage, advance, promote, or roll back. Time is an argument.

- The judge failed the canary: roll back at once, whatever the stage clock says.
- The stage has not run its `stage_duration` yet: hold; check again after `health_check_interval`, or at
  the end of the stage if that comes first.
- The stage has run its time and the judge passed it: advance to the next stage, or promote after the last.
- The stage has run its time but the judge cannot tell yet (too little traffic): hold, and say why.

With a `Policy` (the engine always passes one; without it an inconclusive stage is held indefinitely):

- An inconclusive stage is held at most `inconclusive_timeout` seconds past its duration; then
  `inconclusive_action` decides: "pause" (ask a person), "rollback", or "proceed" (advance to the next
  stage). "proceed" never promotes and never enters a 100 % stage (which compares nothing) without
  evidence: before such a stage it waits FULL_STAGE_PATIENCE timeouts, then pauses; after the last, it pauses.
- `observe_only` (`analysis: observe`, formerly `dry_run`): the verdict is recorded, never acted on. Stages
  advance on time as if every check passed and the last one promotes; nothing is rolled back, paused or held. `Decision.would` says what the judge
  would have done, and the reasons say it in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

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
    PAUSE = "pause"


#: How many inconclusive_timeouts "proceed" waits before a 100 % stage (see decide()).
FULL_STAGE_PATIENCE = 10


@dataclass(frozen=True, slots=True)
class Policy:
    """What to do when the judge cannot tell, and whether to act at all."""

    inconclusive_timeout: int = 300  # seconds past the stage's duration
    inconclusive_action: Literal["pause", "rollback", "proceed"] = "proceed"
    observe_only: bool = False  # analysis: observe


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now, when to look again, and why."""

    action: Action
    next_check_at: datetime
    reasons: tuple[str, ...]
    next_stage_index: int | None = None
    would: Action | None = None  # observe only: what the judge would have done instead


def stage_ends_at(clock: StageClock) -> datetime:
    """When the current stage has run its full duration."""
    return clock.stage_started_at + timedelta(seconds=clock.stage_duration)


def decide(clock: StageClock, verdict: Verdict, now: datetime, policy: Policy | None = None) -> Decision:
    """The decision of one monitoring check (see the module docstring for the rules)."""
    if not 0 <= clock.stage_index < len(clock.stages):
        raise ValueError(f"stage index {clock.stage_index} is outside the plan of {len(clock.stages)} stages")
    if clock.health_check_interval < 1:
        raise ValueError("health_check_interval must be at least 1 second")
    if policy is not None and policy.observe_only:
        return _observe_only(clock, verdict, now)
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
        return _advance(clock, now, (f"{here} passed",), verdict.reasons)

    held = f"{here} held: {'; '.join(verdict.reasons)}"
    if policy is None:
        return Decision(Action.HOLD, now + interval, (held,))
    return _inconclusive_past_the_end(clock, verdict, now, policy)


def _inconclusive_past_the_end(
    clock: StageClock, verdict: Verdict, now: datetime, policy: Policy
) -> Decision:
    """An inconclusive verdict after the stage has run its time: hold for evidence up to the policy's
    inconclusive_timeout, then roll back, proceed or pause as its inconclusive_action says."""
    interval = timedelta(seconds=clock.health_check_interval)
    ends = stage_ends_at(clock)
    here = clock.label()
    # "proceed" never gives the canary all traffic without evidence: a 100 % stage compares nothing, so
    # the stage before it waits longer, then pauses.
    proceed = policy.inconclusive_action == "proceed"
    into_full = proceed and not clock.is_last and clock.stages[clock.stage_index + 1] >= 100
    waiting = policy.inconclusive_timeout * (FULL_STAGE_PATIENCE if into_full else 1)
    limit = ends + timedelta(seconds=waiting)
    if now < limit:
        waited = int((now - ends).total_seconds())
        note = f"{here} held {waited} of at most {waiting} s for evidence"
        return Decision(Action.HOLD, min(now + interval, limit), (note, *verdict.reasons))
    gave_up = f"{here} still inconclusive {waiting} s after its end"
    if policy.inconclusive_action == "rollback":
        return Decision(Action.ROLLBACK, now, (f"{gave_up}: rolling back", *verdict.reasons))
    if proceed and not clock.is_last and not into_full:
        return _advance(clock, now, (f"{gave_up}: proceeding without evidence",), verdict.reasons)
    if not proceed:
        why = "pausing for a person"
    elif clock.is_last:
        why = "not promoting without evidence"
    else:
        why = "not sending all traffic to the canary without evidence"
    return Decision(Action.PAUSE, now, (f"{gave_up}: {why}", *verdict.reasons))


def _advance(clock: StageClock, now: datetime, head: tuple[str, ...], reasons: tuple[str, ...]) -> Decision:
    """Advance to the next stage, or promote after the last."""
    if clock.is_last:
        return Decision(Action.PROMOTE, now, (f"last {clock.label()} passed", *head[1:], *reasons))
    nxt = clock.stage_index + 1
    interval = timedelta(seconds=clock.health_check_interval)
    first = f"{head[0]}; next {clock.label(nxt)}"
    return Decision(Action.ADVANCE, now + interval, (first, *head[1:], *reasons), nxt)


def _observe_only(clock: StageClock, verdict: Verdict, now: datetime) -> Decision:
    """Acts as if every check passed; records what the judge would have done."""
    would = {Outcome.FAIL: Action.ROLLBACK, Outcome.INCONCLUSIVE: Action.HOLD}.get(verdict.outcome)
    words = {Action.ROLLBACK: "would roll back", Action.HOLD: "cannot tell yet"}
    notes = tuple(f"observe only: {words[would]}: {r}" for r in verdict.reasons) if would else verdict.reasons
    ends = stage_ends_at(clock)
    if now < ends:
        elapsed = max(0, int((now - clock.stage_started_at).total_seconds()))
        progress = f"{clock.label()}: {elapsed} of {clock.stage_duration} s elapsed"
        interval = timedelta(seconds=clock.health_check_interval)
        return Decision(Action.HOLD, min(now + interval, ends), (progress, *notes), would=would)
    decision = _advance(clock, now, (f"{clock.label()} ran its time (analysis: observe)",), notes)
    if clock.is_last:
        decision = Decision(
            Action.PROMOTE,
            now,
            (f"last {clock.label()} ran its time (analysis: observe)", *notes),
            would=would,
        )
    return Decision(
        decision.action, decision.next_check_at, decision.reasons, decision.next_stage_index, would
    )


__all__ = ["Action", "Decision", "Policy", "StageClock", "decide", "stage_ends_at"]
