"""One monitoring check, decided: count the stage's traffic, judge it, and hold, advance, promote, pause or
roll back (the stage rules are in domain/decide.py, the judges in domain/judge.py).

The judge sees the proxy's traffic, or the metric source's (Prometheus) when one is configured. A source
that fails is retried at the next checks, during which nothing is judged on missing numbers; after
`source_failure_limit` failures in a row `source_failure_action` decides: pause, roll back, or judge on
the proxy's own figures. A rollback cuts the canary's traffic in the same tick as the decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from canaryd.domain import checks, rolling
from canaryd.domain.changes import transition
from canaryd.domain.decide import Action, Decision, Policy, StageClock, decide
from canaryd.domain.judge import Evidence, Observation, Outcome, Verdict, judge_for
from canaryd.domain.plan import (
    Change,
    Event,
    EventKind,
    Facts,
    Observed,
    Plan,
    SetRoutes,
    Snapshot,
    SourceFailureAction,
    SourceSample,
    StageStart,
    TrafficSample,
    Trigger,
)
from canaryd.domain.routing import canary_share, expected_share, routes, stage_note
from canaryd.domain.strategy import MIRROR_PASSED, stops_after_test
from canaryd.domain.types import CohortStats, HostLoad, State

_THEN = {
    SourceFailureAction.PAUSE: "pausing",
    SourceFailureAction.ROLLBACK: "rolling back",
    SourceFailureAction.PROXY: "judging on the proxy's figures",
}


@dataclass(frozen=True, slots=True)
class _Judged:
    verdict: Verdict
    source_action: SourceFailureAction | None
    source_reasons: tuple[str, ...]


def monitor(s: Snapshot, o: Observed, now: datetime) -> Plan:
    """The plan of one monitoring check."""
    traffic = o.traffic or TrafficSample(CohortStats(), CohortStats(), s.log_offset)
    canary = s.stage_canary.merge(traffic.canary)
    stable = s.stage_stable.merge(traffic.stable)
    baseline = s.baseline.merge(traffic.stable)
    failed = [f"{s.server(sid).name}: {h.detail}" for sid, h in sorted(o.health.items()) if not h.ok]
    failures = s.health_failures + 1 if failed else 0
    figures: dict[str, Any] = {
        "stage": s.stage_index + 1,
        "canary": canary.summary(),
        "stable": stable.summary(),
        "baseline": baseline.summary(),
        "health": {"failed": failed, "consecutive_failures": failures},
    }
    judged = _judge(s, o, canary, stable, baseline, failures, figures)
    figures["judge"] = s.config.judge
    figures["verdict"] = judged.verdict.snapshot()
    decision = _stop_instead_of_promoting(s, _stage_decision(s, judged, now), now)
    if s.state is State.WAITING_FOR_APPROVAL:
        decision = _while_waiting(s, decision, now)
    if decision.would is not None:
        figures["observe"] = {"would": decision.would.value}
    facts = Facts(
        stage_canary=canary,
        stage_stable=stable,
        baseline=baseline,
        log_offset=traffic.next_offset,
        health_failures=failures,
        metrics_snapshot=figures,
    )
    return checks.during(s, _act(s, decision, facts, dict(shown_figures(figures)), now))


def shown_figures(figures: Mapping[str, Any]) -> Mapping[str, Any]:
    """What events and the status show of a check's figures: all of them but the judge's state, which is the
    judge's memory between checks (the deployment's row carries it for the next tick), not a figure
    (~1.3 KB of ~5 KB)."""
    if "judge_state" not in figures:
        return figures
    return {k: v for k, v in figures.items() if k != "judge_state"}


def _stage_decision(s: Snapshot, judged: _Judged, now: datetime) -> Decision:
    config = s.config
    if (
        judged.source_action in (SourceFailureAction.PAUSE, SourceFailureAction.ROLLBACK)
        and not config.observe_only
    ):
        action = Action.PAUSE if judged.source_action is SourceFailureAction.PAUSE else Action.ROLLBACK
        return Decision(action, now, judged.source_reasons)
    assert s.stage_started_at is not None
    clock = StageClock(
        s.stage_index,
        tuple(config.stages),
        s.stage_started_at,
        config.stage_duration,
        config.health_check_interval,
    )
    timeout = config.inconclusive_timeout
    policy = Policy(
        config.stage_duration if timeout is None else timeout, config.inconclusive_action, config.observe_only
    )
    return decide(clock, judged.verdict, now, policy)


def _stop_instead_of_promoting(s: Snapshot, decision: Decision, now: datetime) -> Decision:
    """A test that ends without promoting (a mirror test with `then: stop`): its pass rolls the canary
    servers back instead, saying that it passed."""
    if decision.action is not Action.PROMOTE or not stops_after_test(s.strategy, s.config):
        return decision
    why = f"{MIRROR_PASSED}: the canary servers go back to {s.previous_version} without promoting"
    return replace(decision, action=Action.ROLLBACK, reasons=(*decision.reasons, why))


def _act(s: Snapshot, decision: Decision, facts: Facts, figures: dict[str, Any], now: datetime) -> Plan:
    reasons = decision.reasons
    stage = s.stage_index + 1
    if decision.action is Action.HOLD:
        check = Event(EventKind.HEALTH_CHECK, reasons, None, None, stage, canary_share(routes(s)), figures)
        wait = max(0.0, (decision.next_check_at - now).total_seconds())
        return Plan(facts=replace(facts, events=(check,)), change=Change(reasons=reasons, next_tick_in=wait))
    if decision.action is Action.ADVANCE:
        assert decision.next_stage_index is not None
        nxt = decision.next_stage_index
        stages = s.config.stages
        if s.strategy == "rolling":  # the next batch is drained and deployed before its stage starts
            return rolling.next_batch(s, nxt, reasons, facts, figures)
        if stages[nxt] in s.config.approve_before:  # its checks first, then a person
            plan = Plan(facts=facts, change=_await_approval(s, nxt, reasons, figures, now))
            return checks.gated(s, "pre_stage", nxt, plan)
        backends = routes(s, State.MONITORING, stages[nxt])
        note = stage_note(s, nxt)
        event = Event(
            EventKind.STAGE_ADVANCED,
            (*reasons, note),
            State.MONITORING,
            State.MONITORING,
            nxt + 1,
            canary_share(backends),
            figures,
            proxy_figures=True,
        )
        change = Change(
            stage=StageStart(nxt, None),
            reasons=reasons,
            events=(event,),
            next_tick_in=0.0 if checks.starts_with_checks(s, nxt) else s.config.health_check_interval,
        )
        return checks.gated(s, "pre_stage", nxt, Plan((SetRoutes(backends),), facts, change))
    if decision.action is Action.PROMOTE:
        why = reasons or ("all stages passed",)
        promote = transition(s, Trigger.PROMOTE, EventKind.PROMOTED, why, figures)
        return checks.gated(s, "pre_promote", None, Plan(facts=facts, change=promote))
    if decision.action is Action.PAUSE:
        return Plan(facts=facts, change=transition(s, Trigger.PAUSE, EventKind.PAUSED, reasons, figures))
    change = transition(s, Trigger.ROLLBACK, EventKind.ROLLBACK_STARTED, reasons, figures)
    # The safety-critical first step of a rollback, in the same tick as the decision.
    return Plan((SetRoutes(routes(s, State.ROLLING_BACK, 0.0)),), facts, change)


def _await_approval(
    s: Snapshot, nxt: int, reasons: tuple[str, ...], figures: dict[str, Any], now: datetime
) -> Change:
    """Holds the stage that passed and asks a person to start the next one; the clock of the held stage
    restarts, so that it says since when the deployment waits."""
    pct = s.config.stages[nxt]
    why = (
        *reasons,
        f"stage {nxt + 1} ({pct:g} %) waits for approval: resume, or promote to the next stage, to start it",
    )
    waiting = {**figures, "waiting_for": {"stage": nxt + 1, "percentage": pct}}
    change = transition(s, Trigger.AWAIT_APPROVAL, EventKind.WAITING_FOR_APPROVAL, why, waiting)
    return replace(
        change,
        stage=StageStart(s.stage_index, now, keep_traffic=True),
        next_tick_in=s.config.health_check_interval,
    )


def _while_waiting(s: Snapshot, decision: Decision, now: datetime) -> Decision:
    """Waiting for a person: only a rollback (a failing canary, or no approval in time) is acted on."""
    if decision.action is Action.ROLLBACK:
        return decision
    config = s.config
    assert s.stage_started_at is not None
    waited = (now - s.stage_started_at).total_seconds()
    timeout = config.approval_timeout
    if timeout is not None and waited >= timeout and config.approval_timeout_action == "rollback":
        return Decision(Action.ROLLBACK, now, (f"no approval within {timeout} s: rolling back",))
    interval = timedelta(seconds=config.health_check_interval)
    why = f"waiting {int(waited)} s for approval of stage {s.stage_index + 2}"
    return Decision(Action.HOLD, now + interval, (why, *decision.reasons))


def _judge(
    s: Snapshot,
    o: Observed,
    canary: CohortStats,
    stable: CohortStats,
    baseline: CohortStats,
    failures: int,
    figures: dict[str, Any],
) -> _Judged:
    """The verdict on the stage so far, on the proxy's or the metric source's figures."""
    config = s.config
    evidence, action = s.evidence, None
    source_reasons: tuple[str, ...] = ()
    if config.judge == "sequential":
        canary, stable, evidence, action, source_reasons = _source(s, o.source, canary, stable, figures)
    load = {sid: o.host_loads[sid] for sid in o.host_loads}
    observation = Observation(
        canary,
        stable,
        baseline,
        failures,
        expected_share(s),
        tuple(load.get(sid, HostLoad(None, None)) for sid in s.canary_ids if sid in load),
        tuple(load.get(sid, HostLoad(None, None)) for sid in s.stable_ids if sid in load),
        s.stage_index,
        evidence,
    )
    judgement = judge_for(config).judge(observation, config)
    verdict = judgement.verdict
    if action is SourceFailureAction.HOLD:  # the source failed, retrying: judge nothing on missing numbers
        verdict = Verdict(Outcome.INCONCLUSIVE, verdict.metrics, source_reasons)
    if config.judge == "sequential":
        figures["judge_state"] = judgement.evidence.to_json()
    if load:
        figures["host_load"] = {
            s.server(sid).name: {"cpu_percent": h.cpu_percent, "memory_percent": h.memory_percent}
            for sid, h in load.items()
        }
    return _Judged(verdict, action, source_reasons)


def _source(
    s: Snapshot,
    sample: SourceSample | None,
    canary: CohortStats,
    stable: CohortStats,
    figures: dict[str, Any],
) -> tuple[CohortStats, CohortStats, Evidence, SourceFailureAction | None, tuple[str, ...]]:
    """The traffic the judge sees, and what a failing metric source asks for (None: the figures are fine)."""
    evidence = s.evidence
    if sample is None:
        return canary, stable, evidence, None, ()
    if sample.skipped is not None:
        figures["source"] = {"name": "proxy", "ok": True, "why": sample.skipped}
        return canary, stable, evidence, None, ()
    if sample.error is not None or sample.canary is None or sample.stable is None:
        count = evidence.source_failures + 1
        limit = s.config.source_failure_limit
        reasons = [f"metric source: Prometheus failed ({count} of {limit} tries): {sample.error}"]
        action = SourceFailureAction.HOLD
        if count >= limit:
            action = SourceFailureAction(s.config.source_failure_action)
            reasons.append(f"metric source: still failing after {limit} tries; {_THEN[action]}")
        figures["source"] = {"name": "prometheus", "ok": False, "failures": count, "reasons": reasons}
        evidence = replace(evidence, source_failures=count)
        if action is SourceFailureAction.PROXY:
            return canary, stable, evidence, None, ()
        return canary, stable, evidence, action, tuple(reasons)
    figures["source"] = {"name": "prometheus", "ok": True, "window_s": sample.window_s}
    figures["proxy_view"] = {"canary": canary.summary(), "stable": stable.summary()}
    figures["canary"], figures["stable"] = sample.canary.summary(), sample.stable.summary()
    return sample.canary, sample.stable, replace(evidence, source_failures=0), None, ()


__all__ = ["monitor"]
