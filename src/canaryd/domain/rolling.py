"""The steps of a rolling update (strategy `rolling`) that differ from a canary's, as plans of the same
decision function (`rollout.decide` and `monitoring.monitor` call these; domain/batches.py says which
servers form which batch).

- pending: batch 1 is the least loaded servers; deploying it is the canary's deploying state (drained,
  deployed one server per tick, health-gated, then back in the pool and judged as stage 1).
- a stage passes: the next batch joins `canary_ids` and is drained at the proxy in the same tick (behind
  the batch's pre_stage checks); the stage index stays until the batch is back, so "a batch in progress"
  is read from the snapshot alone.
- a batch in progress: one server per tick is deployed (it is out of the pool: routing.routes keeps the
  whole batch out); once all are healthy the batch returns at the others' weight and its stage starts,
  judged against the servers not yet upgraded. Nothing is judged meanwhile.
- the last batch passed: promotion finds every server upgraded and completes. A failure rolls back every
  upgraded server, the traffic cut first, as a canary's does.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from canaryd.domain import batches, checks
from canaryd.domain.changes import transition
from canaryd.domain.plan import (
    ActionRefused,
    Change,
    DeployServer,
    Event,
    EventKind,
    Facts,
    MarkTrafficStart,
    Observed,
    OperatorRequest,
    Plan,
    SetRoutes,
    Snapshot,
    StageStart,
    Trigger,
)
from canaryd.domain.routing import canary_share, routes, stage_note
from canaryd.domain.selection import Candidate, least_loaded
from canaryd.domain.types import HostLoad, State


def _names(s: Snapshot, ids: tuple[int, ...] | list[int]) -> str:
    return ", ".join(s.server(sid).name for sid in ids)


def pending(s: Snapshot, o: Observed, now: datetime) -> Plan:
    """Start: batch 1 is the least loaded servers."""
    candidates = [Candidate(srv.id, o.host_loads.get(srv.id, HostLoad(None, None))) for srv in s.servers]
    sizes = batches.sizes(s)
    first = least_loaded(candidates, sizes[0])
    loads = {
        s.server(c.server_id).name: {
            "cpu_percent": c.load.cpu_percent,
            "memory_percent": c.load.memory_percent,
        }
        for c in candidates
    }
    why = (
        f"batch 1 of {len(sizes)}: servers {_names(s, first)} (least loaded of {len(s.servers)}); "
        f"{sizes[0]} server(s) at a time",
    )
    change = transition(s, Trigger.START, EventKind.DEPLOY_STARTED, why, {"host_load": loads})
    return Plan(change=replace(change, canary_ids=tuple(first)))


def next_batch(
    s: Snapshot, nxt: int, reasons: tuple[str, ...], facts: Facts, figures: dict[str, Any]
) -> Plan:
    """The stage passed: batch `nxt` joins the upgraded servers and is drained now (its pre_stage checks
    first); the next ticks deploy it."""
    started = (*s.canary_ids, *batches.servers_of(s, nxt))
    drained = routes(replace(s, canary_ids=started))
    why = (*reasons, f"{stage_note(s, nxt)}: drained, then deployed")
    event = Event(
        EventKind.DEPLOY_STARTED,
        why,
        State.MONITORING,
        State.MONITORING,
        nxt + 1,
        canary_share(drained),
        figures,
        proxy_figures=True,
    )
    change = Change(canary_ids=started, reasons=why, events=(event,), next_tick_in=0.0)
    return checks.gated(s, "pre_stage", nxt, Plan((SetRoutes(drained),), facts, change))


def deploy_batch(s: Snapshot, now: datetime) -> Plan:
    """A batch in progress: deploy its next server (drained: the tick re-asserted the routes first), or,
    all of it healthy, put it back and start its stage."""
    batch = batches.in_progress(s)
    nxt = s.stage_index + 1
    todo = [sid for sid in batch if s.version_of(sid) != s.version]
    if todo:
        name = s.server(todo[0]).name
        event = Event(EventKind.SERVER_DEPLOYED, (f"{s.version} on {name}",), metrics={"server": name})
        doing = (f"{stage_note(s, nxt)}: deploying {name}",)
        return Plan((DeployServer(todo[0], s.version, event),), change=Change(reasons=doing))
    after = replace(s, stage_index=nxt)
    back = routes(after)
    share = canary_share(back)
    note = stage_note(s, nxt)
    ready = Event(
        EventKind.CANARY_DEPLOYED,
        (f"batch {nxt + 1} of {len(s.config.stages)} healthy: {_names(s, batch)}",),
        State.MONITORING,
        State.MONITORING,
        nxt + 1,
        share,
    )
    stage = Event(
        EventKind.STAGE_ADVANCED,
        (note,),
        State.MONITORING,
        State.MONITORING,
        nxt + 1,
        share,
        proxy_figures=True,
    )
    change = Change(
        stage=StageStart(nxt, None),
        reasons=(note,),
        events=(ready, stage),
        next_tick_in=0.0 if checks.starts_with_checks(after, nxt) else s.config.health_check_interval,
    )
    return Plan((SetRoutes(back), MarkTrafficStart()), Facts(health_failures=0), change)


def next_now(s: Snapshot, request: OperatorRequest, note: tuple[str, ...], now: datetime) -> Plan | None:
    """A person's promote to the next stage: the next batch starts now (None past the last batch: that is
    promotion itself). Refused while a batch is deployed or the update is paused."""
    batch = batches.in_progress(s)
    if batch:
        raise ActionRefused(
            f"cannot start the next batch while {stage_note(s, s.stage_index + 1)} is being deployed; "
            "promote to the next batch once it serves, or promote to upgrade every server now"
        )
    if s.state is State.PAUSED:
        raise ActionRefused(
            "a paused rolling update starts no batch: resume it first (or promote to upgrade every server now)"
        )
    nxt = s.stage_index + 1
    if nxt >= len(s.config.stages):
        return None
    started = (*s.canary_ids, *batches.servers_of(s, nxt))
    why = (*note, f"{stage_note(s, nxt)}: drained, then deployed")
    event = Event(EventKind.DEPLOY_STARTED, why, s.state, s.state, nxt + 1, actor=request.actor)
    # The stage's clock restarts so that a tick deciding meanwhile on the stage is not recorded.
    change = Change(
        stage=StageStart(s.stage_index, now, keep_traffic=True),
        canary_ids=started,
        reasons=why,
        events=(event,),
        next_tick_in=0.0,
    )
    return Plan(change=change)


__all__ = ["deploy_batch", "next_batch", "next_now", "pending"]
