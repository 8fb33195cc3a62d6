"""The rollout's one decision function: `decide(snapshot, signal, now) -> Plan`.

Every change to a deployment is decided here, whoever asks: a tick that observed the world, an operator's
action from the API, or an effect that failed. The engine carries the plan out (engine/interpreter.py)
and records it with one write (engine/store.py); this module does no I/O and reads no clock.

A tick, in order:
1. `routes(snapshot)`: the backends the proxy must serve for the recorded state; the engine re-asserts
   them first (a no-op when the proxy already serves them), so a crash anywhere is repaired by the next tick.
2. `needs_of(snapshot, now)`: what to observe (host loads, health, traffic, the metric source).
3. `decide(snapshot, Observed(...), now)`: at most one unit of work for the state:

   - pending: choose the canary servers (least loaded) and start.
   - deploying: drain the canaries, deploy one of them; once all run the new version, give them the first
     stage's share and start monitoring.
   - monitoring: judge the stage; hold, advance, promote, pause or roll back (domain/monitoring.py).
   - rolling (strategy): a batch in progress is deployed, one server per tick, before its stage is
     judged; nothing is observed meanwhile (domain/rolling.py).
   - paused: hold the split; no further tick until a person acts.
   - promoting: upgrade one stable server at a time (drained while busy); then complete.
   - rolling_back, failed: cut the canary's traffic, restore one server at a time; then rolled_back.

A failed effect comes back as `StepFailed`: transient failures are retried with backoff (at most
`MAX_ATTEMPTS`), permanent ones roll back at once; a rollback that keeps failing is `failed` and keeps
retrying. An operator's action (`OperatorRequest`) changes state or stage only; the proxy follows at the
next tick, which the action schedules at once. Illegal actions raise `ActionRefused` and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from canaryd.domain import batches, bluegreen, checks, rolling
from canaryd.domain.changes import transition
from canaryd.domain.lifecycle import Lifecycle
from canaryd.domain.monitoring import monitor
from canaryd.domain.plan import (
    ActionRefused,
    Change,
    CheckRefused,
    DeployServer,
    Event,
    EventKind,
    Facts,
    Needs,
    Observed,
    OperatorAction,
    OperatorRequest,
    Plan,
    SetRoutes,
    Signal,
    Snapshot,
    StageStart,
    StepFailed,
    Trigger,
)
from canaryd.domain.routing import routes
from canaryd.domain.selection import Candidate, SelectionError, select_canary_servers
from canaryd.domain.stages import first_stage
from canaryd.domain.strategy import runs_green
from canaryd.domain.types import HostLoad, State

#: Tries of a step that failed for a transient reason before the deployment gives up on it.
MAX_ATTEMPTS = 4

_ACTION_EVENTS = {
    OperatorAction.PAUSE: EventKind.PAUSED,
    OperatorAction.RESUME: EventKind.RESUMED,
    OperatorAction.PROMOTE: EventKind.PROMOTED,
    OperatorAction.ROLLBACK: EventKind.ROLLBACK_STARTED,
}


# --- what to observe -----------------------------------------------------------------------------------


def needs_of(s: Snapshot, now: datetime) -> Needs:
    """What a tick must observe before `decide` (only pending, monitoring and waiting for approval observe
    anything)."""
    all_ids = tuple(srv.id for srv in s.servers)
    if s.state is State.PENDING:
        return Needs(host_loads=all_ids)
    if batches.in_progress(s):  # a rolling update's batch being deployed: nothing is judged meanwhile
        return Needs()
    if s.state is State.PROMOTING and s.switched_at is not None:  # blue_green's watch while blue still runs
        return Needs(health=s.canary_ids, traffic=True)
    if s.state not in (State.MONITORING, State.WAITING_FOR_APPROVAL):
        return Needs()
    config = s.config
    compare_hosts = config.judge == "sequential" and (
        config.cpu_tolerance is not None or config.memory_tolerance is not None
    )
    loads = (*s.canary_ids, *s.stable_ids) if compare_hosts else ()
    needs = Needs(host_loads=loads, health=s.canary_ids, traffic=True)
    source = config.prometheus
    if config.judge != "sequential" or config.metrics_source != "prometheus" or source is None:
        return needs
    assert s.stage_started_at is not None
    window = max(1, int((now - s.stage_started_at).total_seconds()))
    if window < source.min_window:  # too few scrapes in the stage yet for increase()
        return replace(needs, source_skipped="stage younger than min_window")
    return replace(needs, source_window=window)


# --- the decision --------------------------------------------------------------------------------------


def decide(s: Snapshot, signal: Signal, now: datetime) -> Plan:
    """The plan for `signal` on the deployment `s` at `now` (see the module docstring)."""
    if isinstance(signal, OperatorRequest):
        return _operator(s, signal, now)
    if isinstance(signal, StepFailed):
        return _step_failed(s, signal)
    if isinstance(signal, CheckRefused):
        return checks.refused(s, signal, now)
    if s.strategy == "rolling" and s.state is State.PENDING:
        return rolling.pending(s, signal, now)
    if batches.in_progress(s):
        return rolling.deploy_batch(s, now)
    handler = _HANDLERS.get(s.state)
    if runs_green(s.strategy, s.config):  # blue_green's steps where it differs (domain/bluegreen.py)
        handler = bluegreen.HANDLERS.get(s.state, handler)
    if handler is None:  # finished: nothing to do, schedule nothing
        return Plan(change=Change(next_tick_in=None))
    return handler(s, signal, now)


def _pending(s: Snapshot, o: Observed, now: datetime) -> Plan:
    candidates = [Candidate(srv.id, o.host_loads.get(srv.id, HostLoad(None, None))) for srv in s.servers]
    try:
        canary_ids = select_canary_servers(candidates, s.config.canary_server_percentage)
    except SelectionError as exc:
        return Plan(change=transition(s, Trigger.ROLLBACK, EventKind.ROLLBACK_STARTED, (str(exc),)))
    names = ", ".join(s.server(sid).name for sid in canary_ids)
    loads = {
        s.server(c.server_id).name: {
            "cpu_percent": c.load.cpu_percent,
            "memory_percent": c.load.memory_percent,
        }
        for c in candidates
    }
    why = (f"canary servers: {names} (least loaded of {len(s.servers)})",)
    change = transition(s, Trigger.START, EventKind.DEPLOY_STARTED, why, {"host_load": loads})
    return Plan(change=replace(change, canary_ids=tuple(canary_ids)))


def _deploying(s: Snapshot, o: Observed, now: datetime) -> Plan:
    todo = [sid for sid in s.canary_ids if s.version_of(sid) != s.version]
    if todo:
        plan = Plan(effects=(_deploy(s, todo[0], s.version, EventKind.SERVER_DEPLOYED),))
        untouched = all(s.version_of(sid) == s.previous_version for sid in s.canary_ids)
        return checks.gated(s, "pre_deploy", None, plan) if untouched else plan
    stages = s.config.stages
    first = routes(s, State.MONITORING, stages[0])
    return first_stage(s, first, f"{len(s.canary_ids)} canary server(s) healthy")


def _paused(s: Snapshot, o: Observed, now: datetime) -> Plan:
    return Plan(change=Change(next_tick_in=None))


def _promoting(s: Snapshot, o: Observed, now: datetime) -> Plan:
    todo = [srv.id for srv in s.servers if s.version_of(srv.id) != s.version]
    if todo:
        return Plan(_replace_server(s, todo[0], s.version, EventKind.SERVER_PROMOTED))
    done = (f"{s.version} runs on all {len(s.servers)} servers",)
    change = transition(s, Trigger.COMPLETE, EventKind.COMPLETED, done, next_tick_in=None)
    return Plan(change=replace(change, application_version=s.version))


def _rolling_back(s: Snapshot, o: Observed, now: datetime) -> Plan:
    todo = [srv.id for srv in s.servers if s.version_of(srv.id) != s.previous_version]
    if todo:
        effects = _replace_server(s, todo[0], s.previous_version, EventKind.SERVER_RESTORED)
        return Plan(effects, Facts(attempts=0))
    why = s.reasons or ("rolled back",)
    finish = transition(s, Trigger.FINISH_ROLLBACK, EventKind.ROLLED_BACK, why, next_tick_in=None)
    return checks.after_rollback(s, Plan(change=finish))


def _deploy(s: Snapshot, server_id: int, version: str, kind: EventKind) -> DeployServer:
    name = s.server(server_id).name
    return DeployServer(server_id, version, Event(kind, (f"{version} on {name}",), metrics={"server": name}))


def _replace_server(
    s: Snapshot, server_id: int, version: str, kind: EventKind
) -> tuple[SetRoutes, DeployServer, SetRoutes]:
    """Drain one server, change its version, route to it again."""
    after = replace(s, versions={**s.versions, server_id: version})
    return (
        SetRoutes(routes(s, busy=server_id)),
        _deploy(s, server_id, version, kind),
        SetRoutes(routes(after)),
    )


def _step_failed(s: Snapshot, failure: StepFailed) -> Plan:
    """Retry transient failures with backoff; roll back (or keep trying to) otherwise."""
    attempts = s.attempts + 1
    backoff = min(2.0**attempts, s.max_backoff)
    failed = Event(EventKind.STEP_FAILED, (failure.reason,), metrics={"attempt": attempts})
    facts = Facts(attempts=attempts, events=(failed,))
    retry = Plan(facts=facts, change=Change(next_tick_in=backoff))
    if s.state in (State.ROLLING_BACK, State.FAILED):
        if s.state is State.ROLLING_BACK and attempts >= MAX_ATTEMPTS - 1:
            why = (f"rollback cannot finish, still retrying: {failure.reason}",)
            return replace(
                retry, change=transition(s, Trigger.FAIL, EventKind.FAILED, why, next_tick_in=backoff)
            )
        return retry
    if (not failure.permanent and attempts < MAX_ATTEMPTS) or not Lifecycle(s.state, s.paused_from).can(
        Trigger.ROLLBACK.value
    ):
        return retry
    change = transition(s, Trigger.ROLLBACK, EventKind.ROLLBACK_STARTED, (failure.reason,))
    return Plan(facts=replace(facts, attempts=0), change=change)


def _operator(s: Snapshot, request: OperatorRequest, now: datetime) -> Plan:
    """A person's action: pause, resume, promote (all, or to the next stage) or roll back."""
    note = (f"{request.action} by {request.actor}" + (f": {request.reason}" if request.reason else ""),)
    stages = s.config.stages
    if s.state is State.WAITING_FOR_APPROVAL and (
        request.action is OperatorAction.RESUME
        or (request.action is OperatorAction.PROMOTE and request.to_next)
    ):
        return _approve(s, request, note, now)
    if request.action is OperatorAction.PROMOTE and request.to_next:
        if s.state not in (State.MONITORING, State.PAUSED):
            raise ActionRefused(
                f"cannot promote to the next stage of a deployment that is {s.state.value}; "
                "that is possible while monitoring, waiting for approval or paused"
            )
        if s.strategy == "rolling":  # the next batch now
            started = rolling.next_now(s, request, note, now)
            if started is not None:
                return started
        nxt = s.stage_index + 1
        if nxt < len(stages):  # past the last stage, "next" is promotion itself
            event = Event(
                EventKind.STAGE_ADVANCED, note, s.state, s.state, nxt + 1, stages[nxt], actor=request.actor
            )
            return Plan(change=Change(stage=StageStart(nxt, now), reasons=note, events=(event,)))
    lifecycle = Lifecycle(s.state, s.paused_from)
    why = lifecycle.why_not(request.action.value)
    if why is not None:
        raise ActionRefused(why)
    new_state = lifecycle.fire(request.action.value)
    # Resuming restarts the stage's clock; its traffic so far still counts.
    resumed = request.action is OperatorAction.RESUME and new_state is State.MONITORING
    event = Event(
        _ACTION_EVENTS[request.action], note, s.state, new_state, s.stage_index + 1, actor=request.actor
    )
    return Plan(
        change=Change(
            trigger=Trigger(request.action.value),
            stage=StageStart(s.stage_index, now, keep_traffic=True) if resumed else None,
            reasons=note,
            events=(event,),
            next_tick_in=None if new_state is State.PAUSED else 0.0,
        )
    )


def _approve(s: Snapshot, request: OperatorRequest, note: tuple[str, ...], now: datetime) -> Plan:
    """A person starts the stage the deployment waits for."""
    nxt = s.stage_index + 1
    pct = s.config.stages[nxt]
    event = Event(
        EventKind.APPROVED,
        (*note, f"stage {nxt + 1} of {len(s.config.stages)}: {pct:g} %"),
        s.state,
        State.MONITORING,
        nxt + 1,
        pct,
        actor=request.actor,
    )
    change = Change(
        trigger=Trigger.APPROVE, stage=StageStart(nxt, now), reasons=note, events=(event,), next_tick_in=0.0
    )
    return Plan(change=change)


_HANDLERS: dict[State, Callable[[Snapshot, Observed, datetime], Plan]] = {
    State.PENDING: _pending,
    State.DEPLOYING: _deploying,
    State.MONITORING: monitor,
    State.WAITING_FOR_APPROVAL: monitor,
    State.PAUSED: _paused,
    State.PROMOTING: _promoting,
    State.ROLLING_BACK: _rolling_back,
    State.FAILED: _rolling_back,
}


__all__ = ["MAX_ATTEMPTS", "decide", "needs_of"]
