"""Whole rollouts in milliseconds: the real driver, store, services and SQLite database, with the outside
world (proxy, servers, clock, queue) replaced by the in-memory doubles of tests/engine/world.py."""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select

from canaryd.db.engine import make_engine, make_sessionmaker, unit_of_work
from canaryd.db.models import Application, ApplicationServer, Deployment, DeploymentEvent, Server
from canaryd.domain.lifecycle import PAUSABLE_STATES, TRANSITIONS
from canaryd.domain.types import Backend, State
from canaryd.engine.bus import LocalBus
from canaryd.engine.driver import LeaseTerms, RolloutDriver
from canaryd.engine.locks import DeploymentLocks
from canaryd.engine.store import Committed, RolloutStore
from canaryd.observability import Metrics
from canaryd.proxies.base import RouteTable
from canaryd.runtime import Runtime
from canaryd.services.deployments import act, create_deployment
from canaryd.services.schemas import ActionRequest, DeploymentCreate
from canaryd.settings import Settings
from canaryd.transports.factory import TransportFactory

from .world import Behaviour, FakeClock, Fleet, MemoryOutside, RecordingScheduler

#: One TLS context for every harness's HTTP client: loading the CA bundle costs 40-90 ms of CPU each time, and
#: the crash tests build a harness per crash point.
shared_tls_context = functools.cache(ssl.create_default_context)

TERMINAL = {"completed", "rolled_back"}
PORT = 8000
#: Fast settings for the simulated rollouts: four stages of 60 s, a check every 10 s.
FAST: dict[str, Any] = {"stages": [10, 25, 50, 100], "stage_duration": 60, "health_check_interval": 10}
#: Every legal (from, to) pair; `resume` returns to the state a deployment was paused from.
LEGAL = {(src, rule.dest or back) for rule in TRANSITIONS for src in rule.sources for back in PAUSABLE_STATES}


@dataclass
class Harness:
    rt: Runtime
    fleet: Fleet
    clock: FakeClock
    scheduler: RecordingScheduler
    driver: RolloutDriver
    outside: MemoryOutside
    app_id: int
    hosts: list[str]
    ticks: int = 0

    async def deploy(self, version: str, strategy: str = "canary", **config: Any) -> int:
        base = FAST if strategy == "canary" else {k: v for k, v in FAST.items() if k != "stages"}
        payload = DeploymentCreate.model_validate(
            {"version": version, "strategy": strategy, "config": {**base, **config}}
        )
        created = await create_deployment(self.rt, self.app_id, payload, None, "tester")
        return int(created.status["id"])

    async def act(
        self, dep_id: int, action: str, to: str = "full", reason: str | None = None
    ) -> dict[str, Any]:
        return await act(self.rt, dep_id, action, ActionRequest(to=to, reason=reason), "operator")

    async def status(self, dep_id: int) -> Deployment:
        async with self.rt.sessions() as session:
            dep = await session.get(Deployment, dep_id)
            assert dep is not None
            return dep

    async def events(self, dep_id: int) -> list[DeploymentEvent]:
        async with self.rt.sessions() as session:
            rows = await session.execute(
                select(DeploymentEvent)
                .where(DeploymentEvent.deployment_id == dep_id)
                .order_by(DeploymentEvent.seq)
            )
            return list(rows.scalars())

    async def step(self) -> bool:
        """Runs the next due tick (advancing the clock to it); when none is queued, lets the reconciler look
        after a lease's length. False when nothing is left to run."""
        job = self.scheduler.pop_next()
        if job is None:
            self.clock.advance(self.rt.settings.lease_seconds + self.rt.settings.reconcile_interval)
            if not await self.rt.reconcile(grace_seconds=self.rt.settings.reconcile_interval):
                return False
            job = self.scheduler.pop_next()
            assert job is not None
        dep_id, token, at = job
        if at > self.clock.now():
            self.clock.at = at
        if not await self.driver.tick(dep_id, token):  # busy: the real schedulers retry soon
            self.clock.advance(0.5)
            self.scheduler.jobs.append((dep_id, token, self.clock.now()))
        self.ticks += 1
        return True

    async def run(self, dep_id: int, until: set[str] = TERMINAL, max_ticks: int = 500) -> Deployment:
        """Ticks until the deployment reaches one of `until` (or nothing is left to run), checking the
        invariants after every tick."""
        for _ in range(max_ticks):
            dep = await self.status(dep_id)
            if dep.canary_status in until:
                break
            if not await self.step():
                break
            await self.check_invariants(dep_id)
        return await self.status(dep_id)

    async def check_invariants(self, dep_id: int) -> None:
        """No illegal transition, no stage skipped, every server change recorded once, and a rollback's
        traffic cut before any server is restored. Reads only the columns it checks: decoding every event's
        metrics after every tick made this most of a rollout test's time."""
        e = DeploymentEvent
        async with self.rt.sessions() as session:
            events = (
                await session.execute(
                    select(e.seq, e.kind, e.from_state, e.to_state, e.stage)
                    .where(e.deployment_id == dep_id)
                    .order_by(e.seq)
                )
            ).all()
            server_changes = (
                await session.execute(
                    select(e.kind, e.metrics).where(e.deployment_id == dep_id, e.kind.startswith("server_"))
                )
            ).all()
        for ev in events:
            if ev.from_state and ev.to_state and ev.from_state != ev.to_state:
                assert (State(ev.from_state), State(ev.to_state)) in LEGAL, (
                    f"illegal {ev.from_state}->{ev.to_state}"
                )
        stages = [ev.stage for ev in events if ev.kind in ("stage_advanced", "approved")]
        assert stages == list(range(1, len(stages) + 1)), f"stages skipped or repeated: {stages}"
        changes = [(kind, metrics.get("server")) for kind, metrics in server_changes]
        assert len(changes) == len(set(changes)), f"a server change recorded twice: {changes}"
        seqs = [ev.seq for ev in events]
        assert seqs == list(range(1, len(seqs) + 1))

    def restore_order_ok(self, new_version: str) -> None:
        """Every server was drained before its version changed, and when one got the previous version back,
        the proxy served no canary at all (the rollback's cut came first)."""
        serving: tuple[Any, ...] = ()
        ids = {h: i + 1 for i, h in enumerate(self.hosts)}
        for entry in self.fleet.log:
            if entry[0] == "routes":
                serving = entry[1]  # type: ignore[assignment]
                continue
            host, version = entry[1], entry[2]
            assert all(sid != ids[host] for sid, _, _ in serving), f"{host} changed while routed to"
            if version != new_version:
                assert all(cohort == "stable" for _, _, cohort in serving), "canary traffic not cut first"


class HookedStore(RolloutStore):
    """The real store, with the fleet's crash hook before each of a tick's writes."""

    def __init__(self, sessions: Any, locks: DeploymentLocks, fleet: Fleet) -> None:
        super().__init__(sessions, locks)
        self.fleet = fleet

    async def mark_version(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.fleet.before_effect("mark")
        return await super().mark_version(*args, **kwargs)

    async def commit(self, *args: Any, **kwargs: Any) -> Committed:
        self.fleet.before_effect("commit")
        return await super().commit(*args, **kwargs)


@contextlib.asynccontextmanager
async def harness(
    db_url: str, servers: int = 5, behaviours: dict[str, Behaviour] | None = None, **settings: Any
) -> AsyncIterator[Harness]:
    """An application of `servers` simulated servers running v1, registered behind the memory proxy."""
    clock = FakeClock()
    hosts = [f"10.0.0.{i + 1}" for i in range(servers)]
    fleet = Fleet(clock, dict.fromkeys(hosts, "v1"), behaviours or {})
    async with harness_of(db_url, fleet, MemoryOutside(fleet), **settings) as h:
        yield h


@contextlib.asynccontextmanager
async def harness_of(
    db_url: str,
    fleet: Fleet,
    outside: MemoryOutside,
    app_fields: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Harness]:
    """The application on `fleet`'s hosts (`app_fields` over the defaults: port PORT, deploy command),
    registered behind `outside`'s memory proxy, and a driver on the fleet's clock."""
    config = Settings(database_url=db_url, min_stage_duration=1, **settings)
    db = make_engine(db_url)
    sessions = make_sessionmaker(db)
    clock, hosts = fleet.clock, list(fleet.versions)
    scheduler, bus, locks = RecordingScheduler(), LocalBus(), DeploymentLocks(True)
    async with httpx.AsyncClient(verify=shared_tls_context()) as http:
        rt = Runtime(
            config,
            db,
            sessions,
            locks,
            bus,
            scheduler,
            TransportFactory(None),
            http,
            Metrics(),
            "test",
            clock,
        )
        app_id, port = await _register(rt, hosts, app_fields or {})
        backends = tuple(Backend(i + 1, h, port, 1, "stable") for i, h in enumerate(hosts))
        outside.memory_proxy.serving = RouteTable(app_id, "shop", backends, 1)
        terms = LeaseTerms(config.lease_seconds, config.max_retry_backoff)
        store = HookedStore(sessions, locks, fleet)
        driver = RolloutDriver(store, outside, clock, bus, scheduler, rt.metrics, terms, "test")
        try:
            yield Harness(rt, fleet, clock, scheduler, driver, outside, app_id, hosts)
        finally:
            await db.dispose()


async def _register(rt: Runtime, hosts: list[str], app_fields: dict[str, Any]) -> tuple[int, int]:
    """The servers, the proxy and the application (its id and port), routed to every server."""
    spec = {
        "kind": "nginx",
        "server_id": len(hosts) + 1,
        "config_path": "/etc/nginx/canaryd.d/shop.conf",
        "test_command": "nginx -t",
        "reload_command": "nginx -s reload",
        "listen": "80",
        "access_log": "/var/log/nginx/shop.log",
    }
    fields: dict[str, Any] = {"port": PORT, "deploy_command": "deploy {host} {version}", **app_fields}
    async with unit_of_work(rt.sessions) as session:
        for i, host in enumerate(hosts):
            session.add(Server(id=i + 1, name=f"s{i}", host=host, transport="local"))
        session.add(Server(id=len(hosts) + 1, name="proxy", host="10.0.1.1", transport="local"))
        applied = [
            {"server_id": i + 1, "host": h, "port": fields["port"], "weight": 1, "cohort": "stable"}
            for i, h in enumerate(hosts)
        ]
        app = Application(
            name="shop",
            current_version="v1",
            proxy=spec,
            proxy_generation=1,
            proxy_applied=applied,
            server_links=[ApplicationServer(server_id=i + 1) for i in range(len(hosts))],
            **fields,
        )
        session.add(app)
        await session.flush()
        return app.id, fields["port"]


def record_tables(h: Harness) -> list[tuple[Backend, ...]]:
    """Every table the proxy is given, from now on."""
    seen: list[tuple[Backend, ...]] = []
    proxy = h.outside.memory_proxy
    apply = proxy.apply

    async def record(table: Any) -> None:
        seen.append(table.backends)
        await apply(table)

    proxy.apply = record  # type: ignore[method-assign]
    return seen
