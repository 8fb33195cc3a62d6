"""Webhook checks at named points of a rollout, decided (docs/gates.md): which checks a plan calls first,
and what a refusal leads to. No I/O: the engine makes the calls (engine/checks.py).

- **Gates** (`pre_deploy`, `pre_stage`, `pre_promote`): the plan that deploys the first canary server, starts
  a stage or promotes begins with one blocking `CallCheck` per check of that point. The engine calls them in
  order; the first that does not answer 2xx in time stops the plan there, so nothing after it happens and
  the decision is not recorded, and comes back as `CheckRefused`. The deployment then holds where it was
  (the previous split, still judged: a failing canary is still rolled back) and the next tick, one
  `health_check_interval` later, tries the whole gate again. After `retries` further refusals, or
  `retry_timeout` seconds after the first, the check's `failure_action` applies: `hold` (go on holding and
  trying), `pause`, `rollback`, or `ignore` (the gate opens without it). Tries are counted per gate and
  check in `CheckProgress`, not by the step-failure path (`StepFailed`, MAX_ATTEMPTS).
- **during_stage** checks are called once per stage, at the stage's first tick (so also after an approval
  or an operator's promote to the next stage), before anything else that tick does; not when that tick
  rolls back. Their tries are made at once within the tick; a refusal is recorded and ignored unless
  `failure_action` is `pause` or `rollback`.
- **post_rollback** checks are called by the tick that finishes a rollback, before it is recorded; a refusal
  is only recorded.

A person's actions (promote, promote to the next stage, approve, resume) are not gated: a person who
promotes by hand is the gate. Checks act in dry runs too: they are not verdicts.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

from canaryd.domain.changes import transition
from canaryd.domain.config import REDACTED, CheckSpec
from canaryd.domain.lifecycle import Lifecycle
from canaryd.domain.plan import (
    CallCheck,
    Change,
    CheckProgress,
    CheckRefused,
    EventKind,
    Facts,
    Plan,
    Snapshot,
    Trigger,
)
from canaryd.domain.types import State

#: The most of a check's answer shown in reasons and events.
BODY_SHOWN = 200
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def gate_key(point: str, stage_index: int | None = None) -> str:
    """Names a gate: "pre_deploy", "pre_stage:3" (stage numbered from 1), "pre_promote"."""
    return point if stage_index is None else f"{point}:{stage_index + 1}"


def _label(s: Snapshot, point: str, stage_index: int | None) -> str:
    if stage_index is not None:
        where = "before" if point == "pre_stage" else "during"
        return f"{where} stage {stage_index + 1} ({s.config.stages[stage_index]:g} %)"
    return {
        "pre_deploy": f"before deploying {s.version}",
        "pre_promote": "before promotion",
        "post_rollback": "after the rollback",
    }[point]


def _of(s: Snapshot, point: str, stage_index: int | None) -> list[CheckSpec]:
    pct = s.config.stages[stage_index] if stage_index is not None else None
    return [
        c
        for c in s.config.checks
        if c.point == point and (c.stages is None or pct is None or pct in c.stages)
    ]


def _calls(
    s: Snapshot, point: str, stage_index: int | None, checks: list[CheckSpec]
) -> tuple[CallCheck, ...]:
    key, label = gate_key(point, stage_index), _label(s, point, stage_index)
    number = stage_index + 1 if stage_index is not None else None
    pct = s.config.stages[stage_index] if stage_index is not None else None
    return tuple(CallCheck(c, key, label, number, pct, c.action != "ignore") for c in checks)


def gated(s: Snapshot, point: str, stage_index: int | None, plan: Plan) -> Plan:
    """`plan`, behind the checks of the gate `point` (the stage `stage_index` enters, for pre_stage)."""
    key = gate_key(point, stage_index)
    waived = s.checks.waived if s.checks.gate == key else ()
    checks = [c for c in _of(s, point, stage_index) if c.name not in waived]
    if not checks:
        return plan
    # The gate opens when the plan is carried out; its refusals no longer count.
    progress = replace(plan.facts.checks or s.checks, gate=None, check=None, tries=0, since=None, waived=())
    return replace(
        plan,
        effects=(*_calls(s, point, stage_index, checks), *plan.effects),
        facts=replace(plan.facts, checks=progress),
    )


def starts_with_checks(s: Snapshot, stage_index: int) -> bool:
    """Whether stage `stage_index` has during_stage checks (its first tick is then scheduled at once)."""
    return bool(_of(s, "during_stage", stage_index))


def during(s: Snapshot, plan: Plan) -> Plan:
    """A monitoring tick's plan, after the current stage's during_stage checks if none were called yet."""
    number = s.stage_index + 1
    progress = plan.facts.checks or s.checks
    if s.state is not State.MONITORING or progress.during_fired >= number:
        return plan
    if plan.change.trigger is Trigger.ROLLBACK:  # the stage is over
        return plan
    checks = _of(s, "during_stage", s.stage_index)
    if not checks:
        return plan
    return replace(
        plan,
        effects=(*_calls(s, "during_stage", s.stage_index, checks), *plan.effects),
        facts=replace(plan.facts, checks=replace(progress, during_fired=number)),
    )


def after_rollback(s: Snapshot, plan: Plan) -> Plan:
    """The plan that finishes a rollback, calling the post_rollback checks first."""
    checks = _of(s, "post_rollback", None)
    if not checks:
        return plan
    return replace(plan, effects=(*plan.effects, *_calls(s, "post_rollback", None, checks)))


def refused(s: Snapshot, r: CheckRefused, now: datetime) -> Plan:
    """What a check that did not answer 2xx leads to: hold and try again, or its failure_action."""
    spec, p = r.check, s.checks
    same = p.gate == r.gate and p.check == spec.name
    tries = p.tries + 1 if same else 1
    since = p.since if same and p.since is not None else now
    if spec.gates:
        waited = (now - since).total_seconds()
        exhausted = tries > spec.retries or (spec.retry_timeout is not None and waited >= spec.retry_timeout)
    else:  # its tries were made at once, within the tick
        exhausted = True
    action = spec.action if exhausted else "hold"
    fired = max(p.during_fired, s.stage_index + 1) if spec.point == "during_stage" else p.during_fired
    waived = p.waived if p.gate == r.gate else ()
    progress = CheckProgress(r.gate, spec.name, tries, since, waived, fired)
    head = f"{r.label}: check {spec.name} refused: {r.reason}"
    if action in ("pause", "rollback") and Lifecycle(s.state, s.paused_from).can(action):
        trigger, kind, verb = (
            (Trigger.PAUSE, EventKind.PAUSED, "pausing")
            if action == "pause"
            else (Trigger.ROLLBACK, EventKind.ROLLBACK_STARTED, "rolling back")
        )
        why = (head, f"{verb} (failure_action {action}, after {tries} {_tries(tries)})")
        metrics: dict[str, object] = {"check": spec.name, "point": spec.point}
        change = transition(s, trigger, kind, why, metrics)
        return Plan(facts=Facts(checks=CheckProgress(during_fired=fired)), change=change)
    if action == "ignore":
        progress = CheckProgress(r.gate, None, 0, None, (*waived, spec.name), fired)
        why = (head, f"going on without it (failure_action ignore, after {tries} {_tries(tries)})")
        return Plan(facts=Facts(checks=progress), change=Change(reasons=why, next_tick_in=0.0))
    interval = s.config.health_check_interval
    if exhausted:
        note = (
            f"holding after {tries} {_tries(tries)} (failure_action {action}); trying again in {interval} s"
        )
    else:
        note = f"try {tries} of {spec.retries + 1}, then {spec.action}; holding, trying again in {interval} s"
    return Plan(
        facts=Facts(checks=progress), change=Change(reasons=(head, note), next_tick_in=float(interval))
    )


def _tries(n: int) -> str:
    return "try" if n == 1 else "tries"


def shown(body: bytes | str) -> str:
    """An answer's body as reasons and events show it: one line of printable text, at most BODY_SHOWN
    characters."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(_UNPRINTABLE.sub(" ", text).split())
    return text if len(text) <= BODY_SHOWN else text[: BODY_SHOWN - 1] + "…"


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """A deployment's stored settings as they may be shown: every check's secret replaced by REDACTED."""
    checks = config.get("checks")
    if not checks:
        return config
    return {
        **config,
        "checks": [
            {**c, "secret": REDACTED} if isinstance(c, dict) and c.get("secret") else c for c in checks
        ],
    }


__all__ = [
    "BODY_SHOWN",
    "after_rollback",
    "during",
    "gate_key",
    "gated",
    "redacted",
    "refused",
    "shown",
    "starts_with_checks",
]
