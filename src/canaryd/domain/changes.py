"""Building a lifecycle change with the event that explains it."""

from __future__ import annotations

from canaryd.domain.lifecycle import Lifecycle
from canaryd.domain.plan import Change, Event, EventKind, Snapshot, Trigger
from canaryd.domain.routing import canary_share, routes
from canaryd.domain.types import State

_DRAINED = (State.DEPLOYING, State.ROLLING_BACK, State.ROLLED_BACK, State.FAILED)


def transition(
    s: Snapshot,
    trigger: Trigger,
    kind: EventKind,
    reasons: tuple[str, ...],
    metrics: dict[str, object] | None = None,
    next_tick_in: float | None = 0.0,
) -> Change:
    """A change that fires `trigger` (raises IllegalTransition if the state forbids it), with its event."""
    target = Lifecycle(s.state, s.paused_from)
    target.fire(trigger.value)
    staged = s.state in (State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED)
    # The canary gets nothing in these states (a rollback's cut is made in the same tick), while the pool
    # may still describe the previous deployment's cohorts: report 0, not a stale share.
    share = 0.0 if target.state in _DRAINED else canary_share(routes(s))
    event = Event(
        kind,
        reasons,
        s.state,
        target.state,
        s.stage_index + 1 if staged else None,
        share,
        metrics or {},
    )
    return Change(trigger=trigger, reasons=reasons, events=(event,), next_tick_in=next_tick_in)


__all__ = ["transition"]
