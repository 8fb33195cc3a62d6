"""The step every strategy ends its deploying with: the canary is ready, the first stage starts."""

from __future__ import annotations

from dataclasses import replace

from canaryd.domain import checks
from canaryd.domain.changes import transition
from canaryd.domain.plan import (
    Event,
    EventKind,
    Facts,
    MarkTrafficStart,
    Plan,
    SetRoutes,
    Snapshot,
    StageStart,
    Trigger,
)
from canaryd.domain.routing import canary_share, stage_note
from canaryd.domain.types import Backend, State


def first_stage(s: Snapshot, first: tuple[Backend, ...], ready: str) -> Plan:
    """Deploying → monitoring at stage 1: the routes `first` go live, the traffic window starts, `ready`
    says what is deployed; gated by the `pre_stage` checks of stage 1 (they may hold it)."""
    change = transition(
        s,
        Trigger.CANARY_READY,
        EventKind.CANARY_DEPLOYED,
        (ready,),
        next_tick_in=0.0 if checks.starts_with_checks(s, 0) else s.config.health_check_interval,
    )
    stage_event = Event(
        EventKind.STAGE_ADVANCED,
        (stage_note(s, 0),),
        State.MONITORING,
        State.MONITORING,
        1,
        canary_share(first),
        proxy_figures=True,
    )
    change = replace(change, stage=StageStart(0, None), events=(*change.events, stage_event))
    plan = Plan((SetRoutes(first), MarkTrafficStart()), Facts(health_failures=0), change)
    return checks.gated(s, "pre_stage", 0, plan)


__all__ = ["first_stage"]
