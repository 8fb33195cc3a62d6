"""The rollout's database side: the snapshot a decision is made on, the lease a tick holds, and the one
write that records a plan (used by ticks and operators alike).

Leases are fenced: a tick takes the lease with an id of its own, renews it while it works, and every write
it makes checks that the lease is still its own. A tick that lost its lease (it was presumed dead and
another worker took over) writes nothing more.
"""

from __future__ import annotations

import functools
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd.db.engine import unit_of_work
from canaryd.db.jsontext import canonical, parse
from canaryd.db.models import Application, Deployment, DeploymentEvent, Server
from canaryd.db.repositories import (
    ApplicationRepository,
    DeploymentRepository,
    EventRepository,
    Fence,
    ServerRepository,
)
from canaryd.domain.config import CanaryConfig, ProxySpec
from canaryd.domain.judge import Evidence
from canaryd.domain.lifecycle import Lifecycle
from canaryd.domain.plan import Change, CheckProgress, Event, Facts, ServerRef, Snapshot, Trigger
from canaryd.domain.types import CohortStats, State
from canaryd.engine.batch import Batcher
from canaryd.engine.locks import DeploymentLocks
from canaryd.engine.outbox import enqueue
from canaryd.engine.views import deployment_status, event_view

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
    """A fresh tick token (also its member of the Redis tick queue): never reused, so a stale tick knows it is stale."""
    return f"tick:{deployment_id}:{uuid.uuid4().hex}"


class LeaseLost(Exception):  # noqa: N818 - says what happened
    """Another worker holds the deployment now; this tick must not write anything more."""


class Acquired(Enum):
    """Why a tick did not get its deployment (see RolloutStore.take)."""

    BUSY = "busy"  # another tick holds a live lease: try again soon
    STALE = "stale"  # the token is no longer the deployment's scheduled tick: nothing to do


@dataclass(frozen=True, slots=True)
class Loaded:
    """A deployment's snapshot and the rows the engine needs beside it."""

    snapshot: Snapshot
    app: Application
    proxy_server: Server
    servers: dict[int, Server]
    state_version: int
    applied: list[Any]
    generation: int
    #: When this tick was due (for the tick-lag figure).
    due: datetime | None
    #: The status object as the API shows it (what webhook checks are sent); empty without checks.
    status: dict[str, Any] = field(default_factory=dict)
    #: The deployment's row as read with the lease (not attached to any session): the commit changes and
    #: writes it when nothing else has written the deployment since.
    row: Deployment | None = None


@dataclass(frozen=True, slots=True)
class ProxyFacts:
    """What the proxy serves after this tick: the backends proven live and their generation."""

    applied: list[Any]
    generation: int
    canary_share: float
    #: When the last change went live, and how long it took (None: no change this tick).
    live_at: datetime | None = None
    live_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """What to tell the world after a write: events and status to publish, the tick to schedule."""

    messages: list[dict[str, Any]]
    status: dict[str, Any]
    application_id: int
    schedule: tuple[str, datetime] | None
    state: State
    decided: bool  # False when an operator had changed the deployment meanwhile


# Validating a deployment's settings was ~3 % of a worker's CPU per tick, for settings that seldom change:
# the validated objects are kept by their canonical JSON (a few microseconds to make). The domain treats
# them as values and never changes them, so one object may serve every tick that has the same settings.
@functools.lru_cache(maxsize=2048)
def _config_of(text: bytes) -> CanaryConfig:
    return CanaryConfig.model_validate(parse(text), context={"min_stage_duration": 1})


@functools.lru_cache(maxsize=2048)
def _proxy_spec_of(text: bytes) -> ProxySpec:
    return ProxySpec.model_validate(parse(text))


def proxy_spec_of(app: Application) -> ProxySpec:
    """The application's proxy settings, validated."""
    return _proxy_spec_of(canonical(app.proxy))


def snapshot_of(
    dep: Deployment,
    app: Application,
    servers: dict[int, Server],
    max_backoff: float,
    server_ids: list[int] | None = None,
) -> Snapshot:
    """The decision's view of a deployment's rows (`server_ids`: the application's, when read apart)."""
    spec = proxy_spec_of(app)
    stats = dep.stage_stats
    return Snapshot(
        deployment_id=dep.id,
        application_id=app.id,
        state=State(dep.canary_status),
        paused_from=State(dep.paused_from) if dep.paused_from else None,
        version=dep.version,
        previous_version=dep.previous_version,
        config=_config_of(canonical(dep.canary_config)),
        servers=tuple(
            ServerRef(sid, servers[sid].name, servers[sid].host)
            for sid in (app.server_ids if server_ids is None else server_ids)
        ),
        port=app.port,
        weight_limit=spec.weight_limit,
        canary_ids=tuple(int(i) for i in dep.canary_server_ids),
        versions={int(k): str(v) for k, v in dep.server_versions.items()},
        stage_index=dep.current_canary_stage,
        stage_started_at=dep.canary_stage_started_at,
        stage_canary=CohortStats.from_json(stats.get("canary")),
        stage_stable=CohortStats.from_json(stats.get("stable")),
        baseline=CohortStats.from_json(dep.baseline_stats),
        log_offset=dep.log_offset,
        health_failures=dep.consecutive_health_failures,
        attempts=dep.attempts,
        evidence=Evidence.from_json(dep.canary_metrics_snapshot.get("judge_state")),
        reasons=tuple(str(r) for r in dep.reasons),
        max_backoff=max_backoff,
        checks=CheckProgress.from_json(dep.check_state),
        strategy=dep.strategy,
        green_port=app.green_port,
        switched_at=dep.switched_at,
    )


def fire(dep: Deployment, trigger: Trigger, now: datetime) -> State:
    """Fires `trigger` on the row's lifecycle and writes the result back (state, status, finish)."""
    lifecycle = Lifecycle(State(dep.canary_status), State(dep.paused_from) if dep.paused_from else None)
    state = lifecycle.fire(trigger.value)
    dep.canary_status = state.value
    dep.paused_from = lifecycle.paused_from.value if lifecycle.paused_from else None
    dep.status = status_of(state)
    dep.attempts = 0
    if state in (State.COMPLETED, State.ROLLED_BACK):
        dep.active_application_id = None
        dep.finished_at = now
    return state


def record_facts(dep: Deployment, facts: Facts) -> None:
    """Writes what was learned (always, whoever changed the deployment meanwhile)."""
    if facts.stage_canary is not None and facts.stage_stable is not None:
        dep.stage_stats = {"canary": facts.stage_canary.to_json(), "stable": facts.stage_stable.to_json()}
    if facts.baseline is not None:
        dep.baseline_stats = facts.baseline.to_json()
    if facts.log_offset is not None:
        dep.log_offset = facts.log_offset
    if facts.health_failures is not None:
        dep.consecutive_health_failures = facts.health_failures
    if facts.metrics_snapshot is not None:
        dep.canary_metrics_snapshot = dict(facts.metrics_snapshot)
    if facts.attempts is not None:
        dep.attempts = facts.attempts
    if facts.checks is not None:
        dep.check_state = facts.checks.to_json()


def touches_application(proxy: ProxyFacts | None, change: Change | None) -> bool:
    """Whether a tick's write changes its application's row: routes pushed this tick (live_at is set only
    then), canary servers chosen or the application's version finished."""
    pushed = proxy is not None and proxy.live_at is not None
    changed = change is not None and (change.canary_ids is not None or change.application_version is not None)
    return pushed or changed


def record_change(
    dep: Deployment,
    app: Application | None,
    change: Change,
    now: datetime,
    live_at: datetime | None,
    tick_started: datetime | None = None,
) -> tuple[str, datetime] | None:
    """Writes what was decided; returns the tick to schedule (None: none). `app` may be None only when the
    change does not touch it (see touches_application)."""
    if change.trigger is not None:
        fire(dep, change.trigger, now)
    if change.stage is not None:
        dep.current_canary_stage = change.stage.index
        dep.canary_stage_started_at = change.stage.at or live_at or now
        if not change.stage.keep_traffic:
            dep.stage_stats = {}
    if change.canary_ids is not None:
        assert app is not None
        canaries = list(change.canary_ids)
        dep.canary_server_ids = canaries
        dep.stable_server_ids = [sid for sid in app.server_ids if sid not in canaries]
    if change.reasons is not None:
        dep.reasons = list(change.reasons)
    if change.application_version is not None:
        assert app is not None
        app.current_version = change.application_version
    if change.switched:
        dep.switched_at = live_at or now
    if change.swap_ports:  # blue_green complete: the new version listens on the old green port
        assert app is not None and app.green_port is not None
        app.port, app.green_port = app.green_port, app.port
    if change.trigger is not None or change.stage is not None:
        dep.state_version += 1
    if change.next_tick_in is None:
        dep.tick_token, dep.next_tick_at = None, None
        return None
    dep.tick_token = new_token(dep.id)
    # The wait counts from the tick's start, so a tick that took 0.5 s (the CPU sample alone does) does not
    # stretch `health_check_interval`; a tick longer than the wait is followed at once.
    dep.next_tick_at = max(now, (tick_started or now) + timedelta(seconds=change.next_tick_in))
    return dep.tick_token, dep.next_tick_at


def event_row(deployment_id: int, event: Event, at: datetime, proxy: ProxyFacts | None) -> DeploymentEvent:
    metrics = dict(event.metrics)
    if event.proxy_figures and proxy is not None and proxy.live_ms is not None:
        metrics["proxy"] = {"generation": proxy.generation, "live_ms": proxy.live_ms}
    return DeploymentEvent(
        deployment_id=deployment_id,
        at=at,
        kind=event.kind.value,
        from_state=event.from_state.value if event.from_state else None,
        to_state=event.to_state.value if event.to_state else None,
        stage=event.stage,
        traffic_percentage=event.traffic_percentage,
        metrics=metrics,
        reasons=list(event.reasons),
        actor=event.actor,
    )


#: The columns a tick's commit may change (record_facts, record_change, fire and the lease): what is written
#: when the commit changes the tick's own row object (see RolloutStore._commit_many).
COMMIT_COLUMNS = (
    "stage_stats",
    "baseline_stats",
    "log_offset",
    "consecutive_health_failures",
    "canary_metrics_snapshot",
    "attempts",
    "check_state",
    "canary_status",
    "paused_from",
    "status",
    "active_application_id",
    "finished_at",
    "current_canary_stage",
    "canary_stage_started_at",
    "canary_server_ids",
    "stable_server_ids",
    "reasons",
    "switched_at",
    "state_version",
    "tick_token",
    "next_tick_at",
    "canary_traffic_percentage",
    "lease_owner",
    "lease_until",
    "updated_at",
)

#: Most ticks one transaction takes or records at once (a worker runs at most this many side by side anyway).
MAX_BATCH = 100


@dataclass(frozen=True, slots=True)
class _Take:
    deployment_id: int
    token: str
    lease: str
    now: datetime
    until: datetime
    max_backoff: float


@dataclass(frozen=True, slots=True)
class _Commit:
    deployment_id: int
    lease: str
    seen_state_version: int
    facts: Facts
    change: Change
    proxy: ProxyFacts | None
    now: datetime
    servers: dict[int, Server] | None
    tick_started: datetime | None
    row: Deployment | None


class RolloutStore:
    """Deployments as the engine reads and writes them, each write one short, locked transaction.

    A tick's lease-and-load and its commit go through a Batcher: ticks that reach either step while the
    previous batch is in flight share one transaction with set-based statements (docs/design.md, "Batched
    ticks"); each keeps its own lease, fencing and outcome."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], locks: DeploymentLocks) -> None:
        self.sessions = sessions
        self.locks = locks
        self._takes: Batcher[_Take, Loaded | Acquired] = Batcher(self._take_many, MAX_BATCH)
        self._commits: Batcher[_Commit, Committed] = Batcher(self._commit_many, MAX_BATCH)
        #: Loaded rows a commit has begun to change: a batch that failed is run again tick by tick, and
        #: those ticks must read their rows again (making a copy of each row cost ~3 % of a tick's CPU).
        self._spent: weakref.WeakSet[Deployment] = weakref.WeakSet()

    async def take(
        self, deployment_id: int, token: str, lease: str, now: datetime, until: datetime, max_backoff: float
    ) -> Loaded | Acquired:
        """Takes the tick's lease and loads the deployment in one transaction: its snapshot when the lease is
        ours, else BUSY (another tick holds a live lease) or STALE (the token is no longer scheduled)."""
        return await self._takes.submit(_Take(deployment_id, token, lease, now, until, max_backoff))

    async def _take_many(self, takes: Sequence[_Take]) -> list[Loaded | Acquired]:
        # Two takes of one deployment in a batch (a stale tick beside its successor): the later is BUSY and
        # tried again shortly, when it finds out which it is.
        first: dict[int, _Take] = {}
        for t in takes:
            first.setdefault(t.deployment_id, t)
        # The batch's earliest clock reading: a lease that expired by then has expired for every take.
        now, until = min(t.now for t in takes), min(t.until for t in takes)
        async with unit_of_work(self.sessions) as session:
            deployments = DeploymentRepository(session)
            wanted = {i: (t.token, t.lease) for i, t in first.items()}
            got = await deployments.acquire_leases(wanted, now, until)
            missed = [i for i in first if i not in got]
            tokens = await deployments.tick_tokens(missed) if missed else {}
            found = await deployments.with_applications(sorted(got)) if got else {}
            specs = {i: proxy_spec_of(app) for i, (_, app) in found.items()}
            app_ids = sorted({app.id for _, app in found.values()})
            links = await ApplicationRepository(session).server_ids(app_ids) if app_ids else {}
            server_ids = {sid for _, app in found.values() for sid in links.get(app.id, [])}
            server_ids |= {spec.server_id for spec in specs.values()}
            servers = await ServerRepository(session).detached(sorted(server_ids)) if server_ids else {}
            statuses = {
                i: deployment_status(dep, servers) if dep.canary_config.get("checks") else {}
                for i, (dep, _) in found.items()
            }
        outcomes: list[Loaded | Acquired] = []
        for t in takes:
            if first[t.deployment_id] is not t:
                outcomes.append(Acquired.BUSY)
            elif t.deployment_id not in got:
                stale = tokens.get(t.deployment_id) != t.token
                outcomes.append(Acquired.STALE if stale else Acquired.BUSY)
            else:
                dep, app = found[t.deployment_id]
                spec, app_servers = specs[t.deployment_id], links.get(app.id, [])
                outcomes.append(
                    Loaded(
                        snapshot_of(dep, app, servers, t.max_backoff, app_servers),
                        app,
                        servers[spec.server_id],
                        {sid: servers[sid] for sid in app_servers},
                        dep.state_version,
                        list(app.proxy_applied),
                        app.proxy_generation,
                        dep.next_tick_at,
                        statuses[t.deployment_id],
                        dep,
                    )
                )
        return outcomes

    async def renew(self, deployment_id: int, lease: str, until: datetime) -> bool:
        async with unit_of_work(self.sessions) as session:
            return await DeploymentRepository(session).renew_lease(deployment_id, lease, until)

    async def mark_version(
        self, deployment_id: int, lease: str, server_id: int, version: str, event: Event | None, now: datetime
    ) -> list[dict[str, Any]]:
        """Records at once which version a server runs (or that it is being changed), with its event."""
        async with self.locks.hold(deployment_id), unit_of_work(self.sessions) as session:
            dep = await self._fenced(session, deployment_id, lease)
            dep.server_versions = {**dep.server_versions, str(server_id): version}
            if event is None:
                return []
            row = await EventRepository(session).append(event_row(deployment_id, event, now, None))
            await enqueue(session, dep, [row])  # webhook deliveries commit with their event
            return [{"type": "event", **event_view(row)}]

    async def commit(
        self,
        deployment_id: int,
        lease: str,
        seen_state_version: int,
        facts: Facts,
        change: Change,
        proxy: ProxyFacts | None,
        now: datetime,
        servers: dict[int, Server] | None = None,
        tick_started: datetime | None = None,
        row: Deployment | None = None,
    ) -> Committed:
        """Records a tick's plan: facts always, the change only if nobody changed the deployment meanwhile;
        releases the lease. Raises LeaseLost when the lease is no longer this tick's. `servers` (the tick's
        own, when given) spares reading them again for the status; `tick_started` is when the tick began
        (the next one is due `next_tick_in` after that); `row` (Loaded.row) spares reading the deployment
        again when nothing has written it since."""
        return await self._commits.submit(
            _Commit(
                deployment_id,
                lease,
                seen_state_version,
                facts,
                change,
                proxy,
                now,
                servers,
                tick_started,
                row,
            )
        )

    async def _commit_many(self, commits: Sequence[_Commit]) -> list[Committed | BaseException]:
        """One transaction for a batch of commits. The application row is read only for the ticks that
        changed it (routes pushed, canaries chosen, version finished).

        The batch's rows are locked, and only their lease, state_version and updated_at read. A row that
        nobody has written since the tick read it with its lease (updated_at unchanged: every write of a
        deployment sets it) is not read again: the commit changes the tick's own row object and writes
        COMMIT_COLUMNS of all such rows in one executemany. The others (an operator acted, a server's
        version was recorded, the lease renewed, or no row given) are read and written through the ORM."""
        ids = [c.deployment_id for c in commits]
        async with self.locks.hold_all(ids), unit_of_work(self.sessions) as session:
            repo = DeploymentRepository(session)
            fences = await repo.fences_for_update(ids)

            def unchanged(c: _Commit) -> bool:
                fence = fences.get(c.deployment_id)
                return (
                    c.row is not None
                    and c.row not in self._spent
                    and fence is not None
                    and fence.updated_at == c.row.updated_at
                    and fence.state_version == c.row.state_version
                )

            reread = [c.deployment_id for c in commits if not unchanged(c)]
            deps = await repo.many_for_update(reread) if reread else {}
            fenced, own_rows, outcomes = _fence(commits, fences, deps, self._spent)
            app_ids = {
                dep.application_id
                for c, dep, decided in fenced.values()
                if touches_application(c.proxy, c.change if decided else None)
            }
            apps = await ApplicationRepository(session).many(sorted(app_ids)) if app_ids else {}
            written = {
                n: _record(
                    c, dep, apps.get(dep.application_id) if dep.application_id in app_ids else None, decided
                )
                for n, (c, dep, decided) in fenced.items()
            }
            if own_rows:
                await repo.write_columns(COMMIT_COLUMNS, own_rows)
            rows = await EventRepository(session).append_many(
                [
                    event_row(dep.id, event, c.now, c.proxy)
                    for n, (c, dep, _) in fenced.items()
                    for event in written[n][0]
                ]
            )
            for n, (c, dep, decided) in fenced.items():
                mine, rows = rows[: len(written[n][0])], rows[len(written[n][0]) :]
                messages, status = await self._finish(session, dep, mine, c.servers)
                schedule = written[n][1]
                outcomes[n] = Committed(
                    messages, status, dep.application_id, schedule, State(dep.canary_status), decided
                )
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(commits), "every commit of the batch gets an outcome"
        return done

    async def operate(
        self, deployment_id: int, decide: Callable[[Snapshot], Change], now: datetime
    ) -> Committed | None:
        """Applies an operator's plan under the deployment's lock: `decide(snapshot)` returns the Change
        (or raises to refuse). None when the deployment does not exist."""
        async with self.locks.hold(deployment_id), unit_of_work(self.sessions) as session:
            dep = await DeploymentRepository(session).get(deployment_id, for_update=True)
            if dep is None:
                return None
            app = await ApplicationRepository(session).get(dep.application_id)
            assert app is not None
            servers = await ServerRepository(session).many(app.server_ids)
            change: Change = decide(snapshot_of(dep, app, servers, 0.0))
            schedule = record_change(dep, app, change, now, None)
            dep.updated_at = now
            rows = await EventRepository(session).append_many(
                [event_row(deployment_id, e, now, None) for e in change.events]
            )
            messages, status = await self._finish(session, dep, rows)
        return Committed(messages, status, dep.application_id, schedule, State(dep.canary_status), True)

    async def _fenced(self, session: AsyncSession, deployment_id: int, lease: str) -> Deployment:
        dep = await DeploymentRepository(session).get(deployment_id, for_update=True)
        if dep is None or dep.lease_owner != lease:
            raise LeaseLost(f"deployment {deployment_id}: the lease {lease} is no longer held")
        return dep

    async def _finish(
        self,
        session: AsyncSession,
        dep: Deployment,
        rows: list[DeploymentEvent],
        known: dict[int, Server] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Queues the events' webhook deliveries; returns the events and the new status as messages to
        publish, and the status."""
        messages: list[dict[str, Any]] = [{"type": "event", **event_view(row)} for row in rows]
        await enqueue(session, dep, rows)  # webhook deliveries commit with their events
        ids = [int(sid) for sid in (*dep.canary_server_ids, *dep.stable_server_ids)]
        if known is not None and all(sid in known for sid in ids):
            servers = known
        else:
            servers = await ServerRepository(session).many(ids)
        status = deployment_status(dep, servers)
        messages.append({"type": "status", **status})
        return messages, status


def lease_id(owner: str) -> str:
    """A lease id of its own for one tick, naming the process that holds it."""
    return f"{owner[:60]}:{uuid.uuid4().hex[:12]}"


def _fence(
    commits: Sequence[_Commit],
    fences: dict[int, Fence],
    deps: dict[int, Deployment],
    spent: weakref.WeakSet[Deployment],
) -> tuple[
    dict[int, tuple[_Commit, Deployment, bool]], list[Deployment], list[Committed | BaseException | None]
]:
    """Each commit whose lease still holds, by its place in the batch, with the row it writes and whether
    its decision still applies (the row's state_version is the one it decided on); the tick's own rows
    among them (written as COMMIT_COLUMNS); and the outcomes so far (LeaseLost for the others)."""
    fenced: dict[int, tuple[_Commit, Deployment, bool]] = {}
    own_rows: list[Deployment] = []
    outcomes: list[Committed | BaseException | None] = []
    for n, c in enumerate(commits):
        fence = fences.get(c.deployment_id)
        if fence is None or fence.lease_owner != c.lease or fence.lease_owner is None:
            outcomes.append(LeaseLost(f"deployment {c.deployment_id}: the lease {c.lease} is no longer held"))
            continue
        # A second commit under the same lease in this batch is not fenced.
        fences[c.deployment_id] = fence._replace(lease_owner=None)
        if c.deployment_id in deps:
            dep = deps[c.deployment_id]
        else:
            assert c.row is not None
            dep = c.row
            spent.add(dep)
            own_rows.append(dep)
        fenced[n] = (c, dep, dep.state_version == c.seen_state_version)
        outcomes.append(None)
    return fenced, own_rows, outcomes


def _record(
    c: _Commit, dep: Deployment, app: Application | None, decided: bool
) -> tuple[list[Event], tuple[str, datetime] | None]:
    """Writes one fenced commit onto its rows (facts, proxy state, the decided change, the lease freed);
    returns its events and the next tick's schedule."""
    record_facts(dep, c.facts)
    if c.proxy is not None:
        if app is not None:
            app.proxy_applied, app.proxy_generation = c.proxy.applied, c.proxy.generation
        dep.canary_traffic_percentage = c.proxy.canary_share
    events, schedule = list(c.facts.events), None
    if decided:
        live_at = c.proxy.live_at if c.proxy else None
        schedule = record_change(dep, app, c.change, c.now, live_at, c.tick_started)
        events += c.change.events
    dep.lease_owner, dep.lease_until = None, None
    dep.updated_at = c.now
    return events, schedule


__all__ = [
    "Acquired",
    "Committed",
    "LeaseLost",
    "Loaded",
    "ProxyFacts",
    "RolloutStore",
    "event_row",
    "fire",
    "lease_id",
    "new_token",
    "record_change",
    "record_facts",
    "snapshot_of",
    "status_of",
    "touches_application",
]
