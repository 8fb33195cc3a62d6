"""One tick of a deployment: lease it, observe, decide (domain), act (proxy, transport), record, reschedule.

A tick is idempotent. It first re-renders the proxy state the database asks for (a no-op when the proxy
already serves it), then does at most one unit of work for the current state: select canary servers,
deploy one server, run one health check, restore one server. Facts learned from I/O (which server runs
which version, traffic read from the log) are always recorded; a state change is recorded only if no
operator changed the deployment while the tick ran (`state_version`), because the operator wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from canaryd.db.engine import unit_of_work
from canaryd.db.models import Application, Deployment, DeploymentEvent, Server, utcnow
from canaryd.db.repositories import (
    ApplicationRepository,
    DeploymentRepository,
    EventRepository,
    ServerRepository,
)
from canaryd.domain.commands import render_command
from canaryd.domain.config import CanaryConfig, ProxySpec
from canaryd.domain.decide import Action, Decision, Policy, StageClock, decide
from canaryd.domain.judge import (
    Evidence,
    Observation,
    Outcome,
    Verdict,
    judge_sequential,
    judge_threshold,
)
from canaryd.domain.lifecycle import Lifecycle
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.selection import Candidate, SelectionError, select_canary_servers
from canaryd.domain.types import Cohort, CohortStats, HostLoad, State
from canaryd.engine.proxies import AppliedRoutes, backends_json, make_proxy, push_routes
from canaryd.metrics.health import check_health
from canaryd.metrics.host import read_host_load
from canaryd.metrics.prometheus import CohortQuery, MetricSourceError, PrometheusReader
from canaryd.observability import record_events
from canaryd.proxies.base import Proxy, ProxyConfigError, ProxyUnavailableError, RouteTable
from canaryd.runtime import Runtime
from canaryd.services.views import deployment_status, event_view, lifecycle_of
from canaryd.transports.base import Transport, TransportError

log = logging.getLogger(__name__)

#: Retries of a step that failed for a transient reason before the deployment gives up on it.
MAX_ATTEMPTS = 4
MAX_BACKOFF_SECONDS = 60.0
UNKNOWN_VERSION = "unknown"

STATUS_OF = {
    State.PENDING: "pending",
    State.COMPLETED: "completed",
    State.ROLLED_BACK: "rolled_back",
    State.FAILED: "failed",
}


def status_of(state: State) -> str:
    """The coarse `status` field: pending, in_progress or the terminal state."""
    return STATUS_OF.get(state, "in_progress")


def new_token(deployment_id: int) -> str:
    return f"tick:{deployment_id}:{uuid.uuid4().hex}"


class DeployError(Exception):
    """A deploy or stop command failed, or the instance never became healthy. Not retried blindly."""


#: Failures of the outside world, handled by retry or rollback; anything else is a bug and logged as one.
EXPECTED_FAILURES = (
    DeployError,
    TransportError,
    ProxyConfigError,
    ProxyUnavailableError,
    TimeoutError,
    OSError,
)


@dataclass
class EventDraft:
    kind: str
    from_state: str | None = None
    to_state: str | None = None
    stage: int | None = None
    traffic_percentage: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    actor: str = "canaryd"

    def to_row(self, deployment_id: int, at: datetime) -> DeploymentEvent:
        return DeploymentEvent(
            deployment_id=deployment_id,
            at=at,
            kind=self.kind,
            from_state=self.from_state,
            to_state=self.to_state,
            stage=self.stage,
            traffic_percentage=self.traffic_percentage,
            metrics=self.metrics,
            reasons=self.reasons,
            actor=self.actor,
        )


@dataclass
class StepResult:
    """What a tick learned and decided. Facts are always written; the rest only if nobody acted meanwhile."""

    facts: dict[str, Any] = field(default_factory=dict)
    app_facts: dict[str, Any] = field(default_factory=dict)
    fact_events: list[EventDraft] = field(default_factory=list)
    trigger: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    app_changes: dict[str, Any] = field(default_factory=dict)
    events: list[EventDraft] = field(default_factory=list)
    next_in: float | None = 0.0  # seconds until the next tick; None schedules none


@dataclass
class Work:
    """The tick's view of the world: a snapshot loaded at start, plus what this tick changed so far."""

    dep: Deployment
    app: Application
    servers: dict[int, Server]
    proxy_server: Server
    config: CanaryConfig
    spec: ProxySpec
    proxy: Proxy
    versions: dict[int, str]
    applied: list[Any]
    generation: int
    #: Whether the proxy was seen serving `applied` during this tick (checked once per tick).
    checked: bool = False
    result: StepResult = field(default_factory=StepResult)

    @property
    def state(self) -> State:
        return State(self.dep.canary_status)

    @property
    def canary_ids(self) -> list[int]:
        return [int(i) for i in self.dep.canary_server_ids]


class Engine:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # --- entry point ---------------------------------------------------------------------------------
    async def tick(self, deployment_id: int, token: str) -> bool:
        """Runs the tick `token` of a deployment. False if another tick holds the lease (try again soon)."""
        now = utcnow()
        async with unit_of_work(self.rt.sessions) as session:
            repo = DeploymentRepository(session)
            if not await repo.acquire_lease(deployment_id, token, self.rt.owner, now, now + self.rt.lease):
                dep = await repo.get(deployment_id)
                return dep is None or dep.tick_token != token  # stale ticks are simply done
        async with self._heartbeat(deployment_id):
            work = await self._load(deployment_id)
            due = work.dep.next_tick_at
            self.rt.metrics.tick_started((now - due).total_seconds() if due is not None else 0.0)
            try:
                await self._step(work)
            except EXPECTED_FAILURES as exc:
                log.warning("deployment %s: %s", deployment_id, exc)
                self.rt.metrics.step_failed()
                self._failure(work, exc)
            except Exception as exc:  # a bug: record it and keep the deployment moving
                log.exception("tick of deployment %s failed", deployment_id)
                self.rt.metrics.tick_error()
                self._failure(work, exc)
        await self._commit(work)
        return True

    @contextlib.asynccontextmanager
    async def _heartbeat(self, deployment_id: int) -> AsyncIterator[None]:
        """Renews the lease while a long step runs, so only a dead tick loses it."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.rt.settings.lease_seconds / 3)
                async with unit_of_work(self.rt.sessions) as session:
                    dep = await DeploymentRepository(session).get(deployment_id)
                    if dep is not None and dep.lease_owner == self.rt.owner:
                        dep.lease_until = utcnow() + self.rt.lease

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _load(self, deployment_id: int) -> Work:
        async with self.rt.sessions() as session:
            dep = await DeploymentRepository(session).get(deployment_id)
            assert dep is not None
            app = await ApplicationRepository(session).get(dep.application_id)
            assert app is not None
            spec = ProxySpec.model_validate(app.proxy)
            servers = await ServerRepository(session).many([*app.server_ids, spec.server_id])
        proxy_server = servers[spec.server_id]
        app_servers = {sid: servers[sid] for sid in app.server_ids}
        versions = {int(k): str(v) for k, v in dep.server_versions.items()}
        for sid in app_servers:
            versions.setdefault(sid, dep.previous_version)
        return Work(
            dep=dep,
            app=app,
            servers=app_servers,
            proxy_server=proxy_server,
            config=CanaryConfig.model_validate(dep.canary_config, context={"min_stage_duration": 1}),
            spec=spec,
            proxy=make_proxy(app, proxy_server, self.rt.transports, self.rt.http),
            versions=versions,
            applied=list(app.proxy_applied),
            generation=app.proxy_generation,
        )

    # --- proxy ----------------------------------------------------------------------------------------
    async def sync_proxy(
        self, w: Work, state: State, percentage: float, busy: int | None = None
    ) -> AppliedRoutes | None:
        """Makes the proxy serve the pool `state` asks for; returns None if it already did."""
        if busy is None:  # a deploy interrupted by a crash: keep that server out until it is redone
            busy = next((sid for sid, v in w.versions.items() if v == UNKNOWN_VERSION), None)
        pool = [
            PoolServer(
                sid,
                s.host,
                w.app.port,
                # A server whose deploy was interrupted may run either version: never route to it as stable.
                w.dep.version if w.versions[sid] == UNKNOWN_VERSION else w.versions[sid],
            )
            for sid, s in w.servers.items()
        ]
        backends = desired_backends(
            state, pool, frozenset(w.canary_ids), w.dep.version, percentage, busy, w.spec.weight_limit
        )
        if backends_json(backends) == w.applied:
            table = RouteTable(w.app.id, w.app.name, backends, w.generation)
            if w.checked or await w.proxy.check(table):
                w.checked = True
                return None
            # Restarted, reloaded from other files, or its runtime weights lost: say so and re-assert.
            w.result.fact_events.append(
                EventDraft(
                    "proxy_reasserted", reasons=[f"the proxy no longer served generation {w.generation}"]
                )
            )
        applied = await push_routes(w.proxy, w.app, backends, w.generation + 1)
        w.checked = True
        self.rt.metrics.proxy_applied(w.spec.kind, applied.live_ms / 1000)
        w.generation, w.applied = applied.generation, applied.backends
        w.result.app_facts.update(proxy_generation=w.generation, proxy_applied=w.applied)
        return applied

    @staticmethod
    def live_percentage(w: Work) -> float:
        """The canary's share of requests that the applied weights really give."""
        canary = sum(int(b["weight"]) for b in w.applied if b["cohort"] == "canary")
        total = sum(int(b["weight"]) for b in w.applied)
        return round(100.0 * canary / total, 3) if total else 0.0

    # --- steps ----------------------------------------------------------------------------------------
    async def _step(self, w: Work) -> None:
        handlers: dict[State, Callable[[Work], Awaitable[None]]] = {
            State.PENDING: self._pending,
            State.DEPLOYING: self._deploying,
            State.MONITORING: self._monitoring,
            State.PAUSED: self._paused,
            State.PROMOTING: self._promoting,
            State.ROLLING_BACK: self._rolling_back,
            State.FAILED: self._rolling_back,
        }
        handler = handlers.get(w.state)
        if handler is None:  # finished: nothing to do, schedule nothing
            w.result.next_in = None
            return
        await handler(w)

    async def _pending(self, w: Work) -> None:
        loads = await asyncio.gather(*(self._host_load(s) for s in w.servers.values()))
        candidates = [Candidate(sid, load) for sid, load in zip(w.servers, loads, strict=True)]
        try:
            canary_ids = select_canary_servers(candidates, w.config.canary_server_percentage)
        except SelectionError as exc:
            self._transition(w, "rollback", "rollback_started", [str(exc)])
            return
        stable_ids = [sid for sid in w.servers if sid not in canary_ids]
        names = ", ".join(w.servers[sid].name for sid in canary_ids)
        load_figures = {
            w.servers[c.server_id].name: {
                "cpu_percent": c.load.cpu_percent,
                "memory_percent": c.load.memory_percent,
            }
            for c in candidates
        }
        w.result.changes.update(
            canary_server_ids=canary_ids,
            stable_server_ids=stable_ids,
            server_versions={str(k): v for k, v in w.versions.items()},
        )
        self._transition(
            w,
            "start",
            "deploy_started",
            [f"canary servers: {names} (least loaded of {len(w.servers)})"],
            metrics={"host_load": load_figures},
        )

    async def _host_load(self, server: Server) -> HostLoad:
        try:
            return await asyncio.wait_for(read_host_load(self._transport(server)), timeout=10)
        except (TransportError, TimeoutError):
            return HostLoad(None, None)

    async def _deploying(self, w: Work) -> None:
        await self.sync_proxy(w, State.DEPLOYING, 0.0)  # drains the canary servers
        todo = [sid for sid in w.canary_ids if w.versions[sid] != w.dep.version]
        if todo:
            server = w.servers[todo[0]]
            await self._redeploy(w, server, w.dep.version)
            w.result.fact_events.append(
                EventDraft(
                    "server_deployed",
                    metrics={"server": server.name},
                    reasons=[f"{w.dep.version} on {server.name}"],
                )
            )
            return
        first = w.config.stages[0]
        applied = await self.sync_proxy(w, State.MONITORING, first)
        live = self.live_percentage(w)
        w.result.facts["log_offset"] = await w.proxy.traffic_offset()
        w.result.changes.update(
            current_canary_stage=0,
            canary_traffic_percentage=live,
            canary_stage_started_at=utcnow(),
            stage_stats={},
            consecutive_health_failures=0,
        )
        self._transition(
            w,
            "canary_ready",
            "canary_deployed",
            [f"{len(todo) or len(w.canary_ids)} canary server(s) healthy"],
        )
        w.result.events.append(
            self._stage_event(w, 0, live, applied, {}, [f"stage 1 of {len(w.config.stages)}: {first:g} %"])
        )
        w.result.next_in = w.config.health_check_interval

    def _stage_event(
        self,
        w: Work,
        index: int,
        live: float,
        applied: AppliedRoutes | None,
        metrics: dict[str, Any],
        reasons: list[str],
    ) -> EventDraft:
        figures = dict(metrics)
        if applied is not None:
            figures["proxy"] = {"generation": applied.generation, "live_ms": applied.live_ms}
        return EventDraft(
            "stage_advanced", State.MONITORING, State.MONITORING, index + 1, live, figures, reasons
        )

    async def _monitoring(self, w: Work) -> None:
        dep, config = w.dep, w.config
        index = dep.current_canary_stage
        await self.sync_proxy(w, State.MONITORING, config.stages[index])
        # An operator's promote {"to": "next"} changes the stage without a tick: report what is live.
        w.result.facts["canary_traffic_percentage"] = self.live_percentage(w)
        host_port = {f"{s.host}:{w.app.port}": sid for sid, s in w.servers.items()}
        canary = set(w.canary_ids)

        def cohort_of(address: str) -> Any:
            sid = host_port.get(address)
            if sid is None:
                return None
            return "canary" if sid in canary else "stable"

        # Lines still in the log from before this stage's split (an operator's promote to the next stage, the
        # backlog of the previous tick) must not count for it.
        since = dep.canary_stage_started_at.timestamp() if dep.canary_stage_started_at else None
        reading = await w.proxy.read_traffic(dep.log_offset, cohort_of, since)
        stage = {k: CohortStats.from_json(v) for k, v in dep.stage_stats.items()}
        stage_canary = stage.get("canary", CohortStats()).merge(reading.cohorts.get("canary", CohortStats()))
        stage_stable = stage.get("stable", CohortStats()).merge(reading.cohorts.get("stable", CohortStats()))
        baseline = CohortStats.from_json(dep.baseline_stats).merge(
            reading.cohorts.get("stable", CohortStats())
        )

        canary_ids = list(w.canary_ids)
        stable_ids = [sid for sid in w.servers if sid not in canary]
        compare_hosts = config.judge == "sequential" and (
            config.cpu_tolerance is not None or config.memory_tolerance is not None
        )
        checks, loads = await asyncio.gather(
            asyncio.gather(
                *(
                    check_health(
                        self.rt.http,
                        w.servers[sid].host,
                        w.app.port,
                        w.app.health_path,
                        self.rt.settings.health_check_timeout,
                    )
                    for sid in canary_ids
                )
            ),
            asyncio.gather(
                *(
                    self._host_load(w.servers[sid])
                    for sid in (canary_ids + stable_ids if compare_hosts else [])
                )
            ),
        )
        failed = [
            f"{w.servers[sid].name}: {c.detail}"
            for sid, c in zip(canary_ids, checks, strict=True)
            if not c.ok
        ]
        failures = dep.consecutive_health_failures + 1 if failed else 0
        snapshot: dict[str, Any] = {
            "stage": index + 1,
            "canary": stage_canary.summary(),
            "stable": stage_stable.summary(),
            "baseline": baseline.summary(),
            "health": {"failed": failed, "consecutive_failures": failures},
        }
        now = utcnow()
        assert dep.canary_stage_started_at is not None
        source_action: str | None = None
        if config.judge == "threshold":
            verdict = judge_threshold(stage_canary, stage_stable, baseline, failures, config)
        else:
            judge_canary, judge_stable, evidence, source_action = await self._judge_inputs(
                w, stage_canary, stage_stable, now, snapshot
            )
            share = self.live_percentage(w) / 100
            obs = Observation(
                judge_canary,
                judge_stable,
                baseline,
                failures,
                share,
                tuple(loads[: len(canary_ids)]),
                tuple(loads[len(canary_ids) :]),
                index,
                evidence,
            )
            judgement = judge_sequential(obs, config)
            verdict = judgement.verdict
            if source_action == "hold":  # the source failed, retrying: judge nothing on missing numbers
                verdict = Verdict(Outcome.INCONCLUSIVE, verdict.metrics, tuple(snapshot["source"]["reasons"]))
            snapshot["judge_state"] = judgement.evidence.to_json()
            if loads:
                snapshot["host_load"] = {
                    w.servers[sid].name: {"cpu_percent": h.cpu_percent, "memory_percent": h.memory_percent}
                    for sid, h in zip(canary_ids + stable_ids, loads, strict=True)
                }
        snapshot["judge"] = config.judge
        snapshot["verdict"] = verdict.snapshot()
        w.result.facts.update(
            log_offset=reading.next_offset,
            stage_stats={"canary": stage_canary.to_json(), "stable": stage_stable.to_json()},
            baseline_stats=baseline.to_json(),
            consecutive_health_failures=failures,
            canary_metrics_snapshot=snapshot,
        )
        clock = StageClock(
            index,
            tuple(config.stages),
            dep.canary_stage_started_at,
            config.stage_duration,
            config.health_check_interval,
        )
        timeout = config.inconclusive_timeout
        policy = Policy(
            config.stage_duration if timeout is None else timeout, config.inconclusive_action, config.dry_run
        )
        if source_action in ("pause", "rollback") and not config.dry_run:
            action = Action.PAUSE if source_action == "pause" else Action.ROLLBACK
            decision = Decision(action, now, tuple(snapshot["source"]["reasons"]))
        else:
            decision = decide(clock, verdict, now, policy)
        if decision.would is not None:
            snapshot["dry_run"] = {"would": decision.would.value}
        reasons = list(decision.reasons)
        live = self.live_percentage(w)
        if decision.action == Action.HOLD:
            w.result.changes["reasons"] = reasons
            w.result.fact_events.append(
                EventDraft("health_check", None, None, index + 1, live, snapshot, reasons)
            )
            w.result.next_in = max(0.0, (decision.next_check_at - now).total_seconds())
        elif decision.action == Action.ADVANCE:
            assert decision.next_stage_index is not None
            nxt = decision.next_stage_index
            applied = await self.sync_proxy(w, State.MONITORING, config.stages[nxt])
            live = self.live_percentage(w)
            w.result.changes.update(
                current_canary_stage=nxt,
                canary_traffic_percentage=live,
                canary_stage_started_at=utcnow(),
                stage_stats={},
                reasons=reasons,
            )
            msg = f"stage {nxt + 1} of {len(config.stages)}: {config.stages[nxt]:g} %"
            w.result.events.append(self._stage_event(w, nxt, live, applied, snapshot, [*reasons, msg]))
            w.result.next_in = config.health_check_interval
        elif decision.action == Action.PROMOTE:
            self._transition(w, "promote", "promoted", reasons or ["all stages passed"], metrics=snapshot)
        elif decision.action == Action.PAUSE:
            self._transition(w, "pause", "paused", reasons, metrics=snapshot)
        else:
            self._transition(w, "rollback", "rollback_started", reasons, metrics=snapshot)
            await self._cut_canary(w)

    async def _judge_inputs(
        self,
        w: Work,
        stage_canary: CohortStats,
        stage_stable: CohortStats,
        now: datetime,
        snapshot: dict[str, Any],
    ) -> tuple[CohortStats, CohortStats, Evidence, str | None]:
        """The traffic the sequential judge sees: the proxy's, or Prometheus' (with its failure policy).

        Returns the canary and stable figures, the carried evidence (with the source's failure count) and
        what a failing source asks for: None (figures are fine), "hold" (retry at the next check),
        "pause" or "rollback"; "proxy" falls back to the proxy's figures.
        """
        config = w.config
        evidence = Evidence.from_json(w.dep.canary_metrics_snapshot.get("judge_state"))
        if config.metrics_source != "prometheus" or config.prometheus is None:
            return stage_canary, stage_stable, evidence, None
        assert w.dep.canary_stage_started_at is not None
        window = max(1, int((now - w.dep.canary_stage_started_at).total_seconds()))
        if window < config.prometheus.min_window:  # too few scrapes in the stage yet for increase()
            snapshot["source"] = {"name": "proxy", "ok": True, "why": "stage younger than min_window"}
            return stage_canary, stage_stable, evidence, None
        canary_ids = set(w.canary_ids)

        def cohort(name: Cohort, version: str) -> CohortQuery:
            ids = [sid for sid in w.servers if (sid in canary_ids) == (name == "canary")]
            return CohortQuery(name, tuple(f"{w.servers[sid].host}:{w.app.port}" for sid in ids), version)

        reader = PrometheusReader(self.rt.http, config.prometheus)
        try:
            read = await reader.read(
                [cohort("canary", w.dep.version), cohort("stable", w.dep.previous_version)], window
            )
        except MetricSourceError as exc:
            count = evidence.source_failures + 1
            evidence = replace(evidence, source_failures=count)
            limit = config.source_failure_limit
            reasons = [f"metric source: Prometheus failed ({count} of {limit} tries): {exc}"]
            if count < limit:
                action = "hold"
            else:
                action = config.source_failure_action
                then = {
                    "pause": "pausing",
                    "rollback": "rolling back",
                    "proxy": "judging on the proxy's figures",
                }
                reasons.append(f"metric source: still failing after {limit} tries; {then[action]}")
            snapshot["source"] = {"name": "prometheus", "ok": False, "failures": count, "reasons": reasons}
            if action == "proxy":
                return stage_canary, stage_stable, evidence, None
            return stage_canary, stage_stable, evidence, action
        snapshot["source"] = {"name": "prometheus", "ok": True, "window_s": window}
        snapshot["proxy_view"] = {"canary": stage_canary.summary(), "stable": stage_stable.summary()}
        snapshot["canary"], snapshot["stable"] = read["canary"].summary(), read["stable"].summary()
        return read["canary"], read["stable"], replace(evidence, source_failures=0), None

    async def _cut_canary(self, w: Work) -> None:
        """The safety-critical first step of a rollback, done in the same tick as the decision."""
        await self.sync_proxy(w, State.ROLLING_BACK, 0.0)
        w.result.changes["canary_traffic_percentage"] = self.live_percentage(w)

    async def _paused(self, w: Work) -> None:
        # Holds the split (an operator may have moved it with promote {"to": "next"}); nothing else.
        await self.sync_proxy(w, State.PAUSED, w.config.stages[w.dep.current_canary_stage])
        w.result.facts["canary_traffic_percentage"] = self.live_percentage(w)
        w.result.next_in = None

    async def _promoting(self, w: Work) -> None:
        await self.sync_proxy(w, State.PROMOTING, 100.0)
        todo = [sid for sid in w.servers if w.versions[sid] != w.dep.version]
        if todo:
            server = w.servers[todo[0]]
            await self.sync_proxy(w, State.PROMOTING, 100.0, busy=server.id)
            await self._redeploy(w, server, w.dep.version)
            await self.sync_proxy(w, State.PROMOTING, 100.0)
            w.result.fact_events.append(
                EventDraft(
                    "server_promoted",
                    metrics={"server": server.name},
                    reasons=[f"{w.dep.version} on {server.name}"],
                )
            )
            return
        w.result.changes.update(
            canary_traffic_percentage=100.0, reasons=[f"{w.dep.version} runs on all {len(w.servers)} servers"]
        )
        w.result.app_changes["current_version"] = w.dep.version
        self._transition(
            w, "complete", "completed", [f"{w.dep.version} runs on all {len(w.servers)} servers"]
        )
        w.result.next_in = None

    async def _rolling_back(self, w: Work) -> None:
        await self._cut_canary(w)
        previous = w.dep.previous_version
        todo = [sid for sid in w.servers if w.versions[sid] != previous]
        if todo:
            server = w.servers[todo[0]]
            await self.sync_proxy(w, w.state, 0.0, busy=server.id)
            await self._redeploy(w, server, previous)
            await self.sync_proxy(w, w.state, 0.0)
            w.result.facts["attempts"] = 0
            w.result.fact_events.append(
                EventDraft(
                    "server_restored",
                    metrics={"server": server.name},
                    reasons=[f"{previous} on {server.name}"],
                )
            )
            return
        w.result.changes.update(canary_traffic_percentage=0.0)
        self._transition(w, "finish_rollback", "rolled_back", list(w.dep.reasons) or ["rolled back"])
        w.result.next_in = None

    # --- servers --------------------------------------------------------------------------------------
    def _transport(self, server: Server) -> Transport:
        return self.rt.transports.for_server(server.transport, server.host, server.ssh_port, server.ssh_user)

    async def _redeploy(self, w: Work, server: Server, version: str) -> None:
        """Runs stop (if any) and deploy on a drained server, then waits for its health check."""
        await self._mark_version(w, server.id, UNKNOWN_VERSION)
        values = {
            "app": w.app.name,
            "version": version,
            "host": server.host,
            "port": str(w.app.port),
            "server": server.name,
        }
        transport = self._transport(server)
        timeout = float(w.config.deploy_timeout)
        for what, template in (("stop", w.app.stop_command), ("deploy", w.app.deploy_command)):
            if not template:
                continue
            result = await transport.run(render_command(template, values), timeout=timeout)
            if not result.ok:
                raise DeployError(
                    f"{what} command on {server.name} exited {result.exit_status}: {result.tail()}"
                )
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            check = await check_health(
                self.rt.http,
                server.host,
                w.app.port,
                w.app.health_path,
                self.rt.settings.health_check_timeout,
            )
            if check.ok:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise DeployError(
                    f"{server.name} did not pass its health check within {timeout:g} s: {check.detail}"
                )
            await asyncio.sleep(0.5)
        await self._mark_version(w, server.id, version)

    async def _mark_version(self, w: Work, server_id: int, version: str) -> None:
        """Records at once which version a server runs (or that it is being changed), so a crash mid-deploy
        leaves a record that makes the rollback restore this server too."""
        w.versions[server_id] = version
        async with self.rt.locks.hold(w.dep.id), unit_of_work(self.rt.sessions) as session:
            dep = await DeploymentRepository(session).get(w.dep.id, for_update=True)
            assert dep is not None
            dep.server_versions = {**dep.server_versions, str(server_id): version}
        w.result.facts["server_versions"] = {str(k): v for k, v in w.versions.items()}

    # --- outcomes -------------------------------------------------------------------------------------
    def _transition(
        self, w: Work, trigger: str, kind: str, reasons: list[str], metrics: dict[str, Any] | None = None
    ) -> None:
        target = Lifecycle(w.state, State(w.dep.paused_from) if w.dep.paused_from else None)
        target.fire(trigger)  # raises if illegal: a bug, caught by tick()
        w.result.trigger = trigger
        w.result.changes.setdefault("reasons", reasons)
        # The canary gets nothing in these states (a rollback's cut is made in this same tick), while the
        # applied pool's cohorts may still describe the previous deployment (all "canary" after a completed
        # one): report 0, not the stale share.
        drained = (State.DEPLOYING, State.ROLLING_BACK, State.ROLLED_BACK, State.FAILED)
        w.result.events.append(
            EventDraft(
                kind,
                w.state.value,
                target.state.value,
                w.dep.current_canary_stage + 1 if w.state in (State.MONITORING, State.PAUSED) else None,
                0.0 if target.state in drained else self.live_percentage(w),
                metrics or {},
                reasons,
            )
        )
        w.result.next_in = 0.0

    def _failure(self, w: Work, exc: Exception) -> None:
        """A step failed: retry transient failures with backoff, roll back (or keep trying to) otherwise."""
        attempts = w.dep.attempts + 1
        # A deploy that failed or a configuration the proxy refused will fail the same way again: roll back
        # at once. Anything else (unreachable, timed out, or a bug of canaryd's own) is retried first, so that
        # a passing glitch or a canaryd bug is not mistaken for a bad canary.
        transient = not isinstance(exc, DeployError | ProxyConfigError)
        reason = str(exc) if isinstance(exc, EXPECTED_FAILURES) else f"{type(exc).__name__}: {exc}"
        # Keep what was learned before the failure, drop any decision.
        w.result.trigger, w.result.changes, w.result.events, w.result.app_changes = None, {}, [], {}
        w.result.facts["attempts"] = attempts
        backoff = min(2.0**attempts, MAX_BACKOFF_SECONDS)
        w.result.next_in = backoff
        w.result.fact_events.append(
            EventDraft("step_failed", reasons=[reason], metrics={"attempt": attempts})
        )
        if w.state in (State.ROLLING_BACK, State.FAILED):
            if w.state == State.ROLLING_BACK and attempts >= MAX_ATTEMPTS - 1:
                self._transition(w, "fail", "failed", [f"rollback cannot finish, still retrying: {reason}"])
                w.result.next_in = backoff
            return
        if transient and attempts < MAX_ATTEMPTS:
            return
        if Lifecycle(w.state, State(w.dep.paused_from) if w.dep.paused_from else None).can("rollback"):
            self._transition(w, "rollback", "rollback_started", [reason])
            w.result.facts["attempts"] = 0

    async def _commit(self, w: Work) -> None:
        result, now = w.result, utcnow()
        published: list[dict[str, Any]] = []
        schedule: tuple[str, datetime] | None = None
        async with self.rt.locks.hold(w.dep.id), unit_of_work(self.rt.sessions) as session:
            deployments, events = DeploymentRepository(session), EventRepository(session)
            dep = await deployments.get(w.dep.id, for_update=True)
            app = await ApplicationRepository(session).get(w.app.id)
            assert dep is not None and app is not None
            for key, value in result.facts.items():
                setattr(dep, key, value)
            for key, value in result.app_facts.items():
                setattr(app, key, value)
            drafts = list(result.fact_events)
            if dep.state_version == w.dep.state_version:
                if result.trigger is not None:
                    apply_trigger(dep, result.trigger, now)
                for key, value in result.changes.items():
                    setattr(dep, key, value)
                for key, value in result.app_changes.items():
                    setattr(app, key, value)
                if result.trigger is not None or "current_canary_stage" in result.changes:
                    dep.state_version += 1
                drafts += result.events
                if result.next_in is None:
                    dep.tick_token, dep.next_tick_at = None, None
                else:
                    dep.tick_token = new_token(dep.id)
                    dep.next_tick_at = now + timedelta(seconds=result.next_in)
                    schedule = (dep.tick_token, dep.next_tick_at)
            dep.lease_owner, dep.lease_until = None, None
            servers = await ServerRepository(session).many([*dep.canary_server_ids, *dep.stable_server_ids])
            for draft in drafts:
                row = await events.append(draft.to_row(dep.id, now))
                published.append({"type": "event", **event_view(row)})
            status = deployment_status(dep, servers)
        record_events(self.rt.metrics, w.app.id, published)
        for message in published:
            await self.rt.bus.publish(w.dep.id, message)
        await self.rt.bus.publish(w.dep.id, {"type": "status", **status})
        if schedule is not None:
            await self.rt.scheduler.schedule(w.dep.id, *schedule)


def apply_trigger(dep: Deployment, trigger: str, now: datetime) -> State:
    """Fires `trigger` on the row's lifecycle and writes the result back (state, status, finish)."""
    lifecycle = lifecycle_of(dep)
    state = lifecycle.fire(trigger)
    dep.canary_status = state.value
    dep.paused_from = lifecycle.paused_from.value if lifecycle.paused_from else None
    dep.status = status_of(state)
    dep.attempts = 0
    if state in (State.COMPLETED, State.ROLLED_BACK):
        dep.active_application_id = None
        dep.finished_at = now
    return state
