"""Building a lifecycle change with the event that explains it."""

from __future__ import annotations

from canaryd.domain.lifecycle import Lifecycle
from canaryd.domain.plan import Change, Event, EventKind, Snapshot, Trigger
from canaryd.domain.routing import canary_share, routes
from canaryd.domain.types import State


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
    staged = s.state in (State.MONITORING, State.PAUSED)
    event = Event(
        kind,
        reasons,
        s.state,
        target.state,
        s.stage_index + 1 if staged else None,
        canary_share(routes(s)),
        metrics or {},
    )
    return Change(trigger=trigger, reasons=reasons, events=(event,), next_tick_in=next_tick_in)


__all__ = ["transition"]
