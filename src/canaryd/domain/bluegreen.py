"""The steps of a blue-green deployment: the states in which it differs from a canary.

`rollout.decide` hands these states of a `blue_green` deployment to this module, and those of a mirror test
with `then: blue_green` (whose stage 1 copies requests to green, its stage 2 is the test below); monitoring
(the test), operator actions, failed steps, gates and history are the canary's own. The proxy side is
`strategy.BlueGreen.backends` (`MirrorBlueGreen`'s): what each state serves.

- pending: every server is a "canary" (each gets a green instance); nothing is drained.
- deploying: green (the new version) starts on `green_port` of one server after the other, beside blue (the
  old version on `port`), which keeps serving everything; each green passes its health check.
- monitoring (the test): blue serves every request except those matching the test rules, which green gets;
  the judge compares them (no share to expect: only the rules decide what green gets).
- promoting: the switch, one proxy change: every request to green (`switched_at` records when it was live);
  blue keeps running `keep_old` seconds, so that a rollback is one proxy change back. Meanwhile green is
  watched: its health checks, and its error rate since the switch against blue's over the deployment (the
  `baseline`; against 0 % when blue was never counted, as after an operator's switch at once); either failing
  switches back at once. Then blue is stopped on
  every server, the proxy serves the same green instances under their servers' own ids, and the
  application's port and green_port trade places (the next blue-green starts beside it on the old port).
- rolling back (before or after the switch): the proxy serves blue (one change, made in the tick that
  decided it); a blue instance already stopped is started again first; then every green is stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from canaryd.domain import checks
from canaryd.domain.changes import transition
from canaryd.domain.plan import (
    Change,
    DeployServer,
    Event,
    EventKind,
    Facts,
    MarkTrafficStart,
    Observed,
    Plan,
    SetRoutes,
    Snapshot,
    StageStart,
    StopInstance,
    TrafficSample,
    Trigger,
)
from canaryd.domain.routing import routes
from canaryd.domain.stages import first_stage
from canaryd.domain.strategy import STOPPED, green_id
from canaryd.domain.types import Backend, CohortStats, State


def _green_port(s: Snapshot) -> int:
    # The API refuses a blue_green deployment of an application without one.
    assert s.green_port is not None, "blue_green needs the application's green_port"
    return s.green_port


def green_version(s: Snapshot, server_id: int) -> str:
    """What the green instance of a server runs (STOPPED: not running)."""
    return s.versions.get(green_id(server_id), STOPPED)


def _pending(s: Snapshot, o: Observed, now: datetime) -> Plan:
    names = ", ".join(srv.name for srv in s.servers)
    why = (
        f"green ({s.version}) starts on port {_green_port(s)} of every server ({names}); blue "
        f"({s.previous_version}) keeps serving on port {s.port}",
    )
    change = transition(s, Trigger.START, EventKind.DEPLOY_STARTED, why)
    return Plan(change=replace(change, canary_ids=tuple(srv.id for srv in s.servers)))


def _deploying(s: Snapshot, o: Observed, now: datetime) -> Plan:
    port = _green_port(s)
    todo = [srv for srv in s.servers if green_version(s, srv.id) != s.version]
    if todo:
        srv = todo[0]
        event = Event(
            EventKind.SERVER_DEPLOYED,
            (f"{s.version} (green) on {srv.name} port {port}",),
            metrics={"server": srv.name, "port": port},
        )
        plan = Plan((DeployServer(srv.id, s.version, event, port=port, record_as=green_id(srv.id)),))
        untouched = all(green_id(x.id) not in s.versions for x in s.servers)
        return checks.gated(s, "pre_deploy", None, plan) if untouched else plan
    # Stage 1: blue_green's test, or (mirror then: blue_green) the mirror phase.
    first = routes(s, State.MONITORING, s.config.stages[0])
    others = "every other request" if s.strategy == "blue_green" else "every request"
    return first_stage(
        s, first, f"green healthy on port {port} of all {len(s.servers)} server(s); blue serves {others}"
    )


def _promoting(s: Snapshot, o: Observed, now: datetime) -> Plan:
    """The switch, the wait with blue still running, then blue stopped and the deployment complete."""
    settings = s.config.blue_green
    keep_old = settings.keep_old if settings is not None else 0
    if s.switched_at is None:
        # The tick re-asserted routes(s) first: that was the switch; this records when it went live.
        why = (f"all traffic switched to green ({s.version}); blue keeps running {keep_old} s",)
        event = Event(
            EventKind.TRAFFIC_SWITCHED,
            why,
            None,
            None,
            None,
            100.0,
            {"keep_old": keep_old},
            proxy_figures=True,
        )
        # The stage restarts at the switch: green's requests from here on are what the watch judges.
        change = Change(
            stage=StageStart(s.stage_index, None),
            switched=True,
            events=(event,),
            next_tick_in=min(keep_old, s.config.health_check_interval),
        )
        return Plan((SetRoutes(routes(s)), MarkTrafficStart()), Facts(health_failures=0), change)
    left = (s.switched_at + timedelta(seconds=keep_old) - now).total_seconds()
    if left > 0:
        return _watch(s, o, left)
    running = [srv for srv in s.servers if s.version_of(srv.id) != STOPPED]
    stops = tuple(_stop(s, srv.id, s.port, srv.id, "blue") for srv in running)
    final = tuple(Backend(srv.id, srv.host, _green_port(s), 1, "canary") for srv in s.servers)
    done = (f"{s.version} serves from port {_green_port(s)} of all {len(s.servers)} servers; blue stopped",)
    change = transition(s, Trigger.COMPLETE, EventKind.COMPLETED, done, next_tick_in=None)
    change = replace(change, application_version=s.version, swap_ports=True)
    return Plan((*stops, SetRoutes(final)), change=change)


def _watch(s: Snapshot, o: Observed, left: float) -> Plan:
    """While blue still runs: green's health and its error rate since the switch; a failure switches back."""
    traffic = o.traffic or TrafficSample(CohortStats(), CohortStats(), s.log_offset)
    green = s.stage_canary.merge(traffic.canary)
    failed = [f"{s.server(sid).name}: {h.detail}" for sid, h in sorted(o.health.items()) if not h.ok]
    failures = s.health_failures + 1 if failed else 0
    figures = {
        "green_since_switch": green.summary(),
        "blue_before_switch": s.baseline.summary(),
        "health": {"failed": failed, "consecutive_failures": failures},
    }
    facts = Facts(
        stage_canary=green, log_offset=traffic.next_offset, health_failures=failures, metrics_snapshot=figures
    )
    why = _after_switch_problems(s, green, failures, failed)
    if why and not s.config.observe_only:
        change = transition(s, Trigger.ROLLBACK, EventKind.ROLLBACK_STARTED, why, figures)
        return Plan((SetRoutes(routes(s, State.ROLLING_BACK, 0.0)),), facts, change)
    return Plan(facts=facts, change=Change(next_tick_in=min(left, s.config.health_check_interval)))


def _after_switch_problems(
    s: Snapshot, green: CohortStats, failures: int, failed: list[str]
) -> tuple[str, ...]:
    config, found = s.config, []
    if failures >= config.max_failed_health_checks:
        found.append(f"after the switch green failed {failures} health checks in a row: {'; '.join(failed)}")
    rate, before = green.error_rate, s.baseline.error_rate
    if rate is not None and green.requests >= config.min_requests:
        # Switched before blue's requests were ever counted (an operator's "switch now" at once): nothing
        # to compare with, so green is held to the threshold itself rather than never judged.
        blue = f"blue {100 * before:.1f} % before it" if before is not None else "no figures of blue (0 %)"
        over = 100 * (rate - (before or 0.0))
        if over > config.error_rate_threshold:
            found.append(
                f"error_rate after the switch: green {100 * rate:.1f} % vs {blue} "
                f"(+{over:.1f} pp, limit +{config.error_rate_threshold:g} pp)"
            )
    return tuple(found)


def _stop(s: Snapshot, server_id: int, port: int, record_as: int, which: str) -> StopInstance:
    name = s.server(server_id).name
    version = s.previous_version if which == "blue" else s.version
    why = (f"{which} ({version}) stopped on {name} port {port}",)
    event = Event(EventKind.INSTANCE_STOPPED, why, metrics={"server": name, "port": port, "instance": which})
    return StopInstance(server_id, port, record_as, version, event)


def _rolling_back(s: Snapshot, o: Observed, now: datetime) -> Plan:
    """Blue back first (started again where it was stopped), then every green stopped."""
    restore = [srv for srv in s.servers if s.version_of(srv.id) != s.previous_version]
    if restore:
        srv = restore[0]
        event = Event(EventKind.SERVER_RESTORED, (f"{s.previous_version} (blue) on {srv.name}",))
        after = replace(s, versions={**s.versions, srv.id: s.previous_version})
        effects = (DeployServer(srv.id, s.previous_version, event), SetRoutes(routes(after)))
        return Plan(effects, Facts(attempts=0))
    running = [srv for srv in s.servers if green_version(s, srv.id) != STOPPED]
    if running:
        stops = tuple(_stop(s, srv.id, _green_port(s), green_id(srv.id), "green") for srv in running)
        return Plan(stops, Facts(attempts=0))
    why = s.reasons or ("rolled back",)
    finish = transition(s, Trigger.FINISH_ROLLBACK, EventKind.ROLLED_BACK, why, next_tick_in=None)
    return checks.after_rollback(s, Plan(change=finish))


HANDLERS: dict[State, Callable[[Snapshot, Observed, datetime], Plan]] = {
    State.PENDING: _pending,
    State.DEPLOYING: _deploying,
    State.PROMOTING: _promoting,
    State.ROLLING_BACK: _rolling_back,
    State.FAILED: _rolling_back,
}


__all__ = ["HANDLERS", "green_version"]
