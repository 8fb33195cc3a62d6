"""Carries out a plan's effects for one tick, over the `Proxy` and `Transport` protocols, and gathers what
a decision needs to observe. Decides nothing: every choice was made in domain/rollout.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from canaryd.domain.commands import render_command
from canaryd.domain.plan import (
    UNKNOWN_VERSION,
    CallCheck,
    CheckRefused,
    DeployServer,
    Effect,
    Event,
    EventKind,
    HealthReading,
    MarkTrafficStart,
    Needs,
    Observed,
    SetRoutes,
    SourceSample,
    StopInstance,
    TrafficSample,
)
from canaryd.domain.routing import address_cohorts, canary_port, canary_share
from canaryd.domain.strategy import STOPPED
from canaryd.domain.types import Backend, Cohort, CohortStats
from canaryd.engine.checks import RETRY_PAUSE_SECONDS, CheckRefusedError, outcome_event, request_for
from canaryd.engine.ports import Clock, Outside
from canaryd.engine.proxies import backends_json
from canaryd.engine.store import Loaded, ProxyFacts, RolloutStore
from canaryd.metrics.prometheus import CohortQuery, MetricSourceError
from canaryd.observability import Metrics
from canaryd.proxies.base import Proxy, RouteTable
from canaryd.proxies.switch import switch

log = logging.getLogger(__name__)

#: How often a deployed server's health endpoint is tried while its health gate waits.
HEALTH_GATE_POLL_SECONDS = 0.5
#: A probe run on a server before anything is changed on it: reaching it must not cost its place.
REACH_PROBE = "true"


class DeployError(Exception):
    """A deploy or stop command failed, or the instance never became healthy. Not retried blindly."""


@dataclass
class Interpreter:
    """One tick's I/O: what it changed at the proxy, the events it learned, the messages to publish."""

    loaded: Loaded
    proxy: Proxy
    outside: Outside
    clock: Clock
    store: RolloutStore
    lease: str
    metrics: Metrics
    applied: list[Any] = field(default_factory=list)
    generation: int = 0
    checked: bool = False
    events: list[Event] = field(default_factory=list)
    published: list[dict[str, Any]] = field(default_factory=list)
    log_offset: int | None = None
    _live: tuple[Any, float] | None = None  # (when, ms) of the last route change

    def __post_init__(self) -> None:
        self.applied, self.generation = list(self.loaded.applied), self.loaded.generation

    async def carry_out(self, effects: tuple[Effect, ...]) -> None:
        for effect in effects:
            if isinstance(effect, SetRoutes):
                await self.set_routes(effect.backends)
            elif isinstance(effect, DeployServer):
                await self.deploy(effect)
            elif isinstance(effect, MarkTrafficStart):
                self.log_offset = await self.proxy.traffic_offset()
            elif isinstance(effect, CallCheck):
                await self.call_check(effect)
            elif isinstance(effect, StopInstance):
                await self.stop(effect)

    async def call_check(self, effect: CallCheck) -> None:
        """Calls a webhook check and records the outcome as an event. A gate's check is tried once (its
        retries are later ticks'); the others up to retries + 1 times now. A blocking refusal raises
        CheckRefusedError, so that nothing after it in the plan happens."""
        check = effect.check
        request = request_for(effect, self.loaded.status)
        tries = 1 if check.gates else check.retries + 1
        for n in range(1, tries + 1):
            answer = await self.outside.call_check(request)
            if answer.ok or n == tries:
                break
            await self.clock.sleep(RETRY_PAUSE_SECONDS)
        self.events.append(outcome_event(effect, answer, n))
        log.info(
            "deployment %s: %s check %s %s",
            self.loaded.snapshot.deployment_id,
            check.point,
            check.name,
            "passed" if answer.ok else f"refused: {answer.reason()}",
        )
        if not answer.ok and effect.blocking:
            raise CheckRefusedError(CheckRefused(check, effect.gate, effect.label, answer.reason()))

    async def set_routes(self, backends: tuple[Backend, ...]) -> None:
        """Makes the proxy serve `backends`, proven live; when it already does, checks that once a tick."""
        app = self.loaded.app
        if backends_json(backends) == self.applied:
            if self.checked or await self.proxy.check(
                RouteTable(app.id, app.name, backends, self.generation)
            ):
                self.checked = True
                return
            # Restarted, reloaded from other files, or its runtime weights lost: say so and re-assert.
            why = f"the proxy no longer served generation {self.generation}"
            self.events.append(Event(EventKind.PROXY_REASSERTED, (why,)))
        # Proven live, or the last table proven live is put back before the error is raised.
        last = RouteTable(
            app.id, app.name, tuple(Backend.from_json(b) for b in self.applied), self.generation
        )
        table = RouteTable(app.id, app.name, backends, self.generation + 1)
        live_ms = await switch(self.proxy, table, last if self.applied else None)
        self.checked = True
        self.metrics.proxy_applied(str(app.proxy.get("kind", "unknown")), live_ms / 1000)
        self.generation, self.applied = table.generation, backends_json(backends)
        self._live = (self.clock.now(), live_ms)

    async def deploy(self, effect: DeployServer) -> None:
        """Stop and deploy commands on a drained server, then its health gate. The server is reached first,
        so one that cannot be reached keeps its known version (and its place once the rollback needs it)."""
        snapshot, server = self.loaded.snapshot, self.loaded.servers[effect.server_id]
        transport = self.outside.transport(server)
        timeout = float(snapshot.config.deploy_timeout)
        await transport.run(REACH_PROBE, timeout=timeout)
        record_as = effect.server_id if effect.record_as is None else effect.record_as
        port = snapshot.port if effect.port is None else effect.port
        await self._mark(record_as, UNKNOWN_VERSION, None)
        values = {
            "app": self.loaded.app.name,
            "version": effect.version,
            "host": server.host,
            "port": str(port),
            "server": server.name,
        }
        for what, template in (
            ("stop", self.loaded.app.stop_command),
            ("deploy", self.loaded.app.deploy_command),
        ):
            if not template:
                continue
            result = await transport.run(render_command(template, values), timeout=timeout)
            if not result.ok:
                raise DeployError(
                    f"{what} command on {server.name} exited {result.exit_status}: {result.tail()}"
                )
        await self._health_gate(server.name, server.host, timeout, port)
        await self._mark(record_as, effect.version, effect.event)

    async def stop(self, effect: StopInstance) -> None:
        """The stop command for one instance no traffic reaches any more (blue_green), then its record. It is
        recorded as unknown first: a crash in between makes a rollback start it again, or the tick stop it
        again (a stop command must be harmless on a stopped instance)."""
        snapshot, server = self.loaded.snapshot, self.loaded.servers[effect.server_id]
        template = self.loaded.app.stop_command
        await self._mark(effect.record_as, UNKNOWN_VERSION, None)
        if template:
            values = {
                "app": self.loaded.app.name,
                "version": effect.version,
                "host": server.host,
                "port": str(effect.port),
                "server": server.name,
            }
            transport = self.outside.transport(server)
            timeout = float(snapshot.config.deploy_timeout)
            result = await transport.run(render_command(template, values), timeout=timeout)
            if not result.ok:
                raise DeployError(
                    f"stop command on {server.name} exited {result.exit_status}: {result.tail()}"
                )
        await self._mark(effect.record_as, STOPPED, effect.event)

    async def _health_gate(self, name: str, host: str, timeout: float, port: int) -> None:
        app = self.loaded.app
        deadline = self.clock.monotonic() + timeout
        while True:
            check = await self.outside.health(host, port, app.health_path)
            if check.ok:
                return
            if self.clock.monotonic() > deadline:
                raise DeployError(
                    f"{name} did not pass its health check within {timeout:g} s: {check.detail}"
                )
            await self.clock.sleep(HEALTH_GATE_POLL_SECONDS)

    async def _mark(self, server_id: int, version: str, event: Event | None) -> None:
        self.published += await self.store.mark_version(
            self.loaded.snapshot.deployment_id, self.lease, server_id, version, event, self.clock.now()
        )

    def proxy_facts(self) -> ProxyFacts:
        backends = [Backend.from_json(b) for b in self.applied]
        live_at, live_ms = self._live if self._live else (None, None)
        return ProxyFacts(self.applied, self.generation, canary_share(backends), live_at, live_ms)

    # --- observing ------------------------------------------------------------------------------------

    async def observe(self, needs: Needs) -> Observed:
        """What `needs` asks for, gathered concurrently: every host load, health check, traffic reading and
        metric-source query as one task of one gather. (A gather per kind inside a gather made 10 tasks and
        4 gathers per monitoring tick, ~10 % of a worker's CPU with an outside that answers at once:
        docs/benchmarks.md, controller scale, "Fourth pass".) What needs no I/O is not made a task."""
        s, app, servers = self.loaded.snapshot, self.loaded.app, self.loaded.servers
        port = canary_port(s)  # the canary's instances (blue_green: green's port)
        asks_source = (
            needs.source_skipped is None
            and needs.source_window is not None
            and s.config.prometheus is not None
        )
        calls: list[Awaitable[Any]] = [self.outside.host_load(servers[sid]) for sid in needs.host_loads]
        calls += [self.outside.health(servers[sid].host, port, app.health_path) for sid in needs.health]
        if needs.traffic:
            calls.append(self._traffic())
        if asks_source:
            calls.append(self._source(needs))
        got = iter(await asyncio.gather(*calls))
        loads = {sid: next(got) for sid in needs.host_loads}
        health = {sid: HealthReading(c.ok, c.detail) for sid in needs.health for c in [next(got)]}
        traffic = next(got) if needs.traffic else None
        source: SourceSample | None = None
        if asks_source:
            source = next(got)
        elif needs.source_skipped is not None:
            source = SourceSample(skipped=needs.source_skipped)
        return Observed(host_loads=loads, health=health, traffic=traffic, source=source)

    async def _traffic(self) -> TrafficSample:
        s = self.loaded.snapshot
        cohorts_of = address_cohorts(s)

        def cohort_of(address: str) -> Any:
            return cohorts_of.get(address)

        # Lines still in the log from before this stage's split (an operator's promote to the next stage, the
        # backlog of the previous tick) must not count for it.
        since = s.stage_started_at.timestamp() if s.stage_started_at else None
        reading = await self.proxy.read_traffic(s.log_offset, cohort_of, since)
        cohorts = reading.cohorts
        return TrafficSample(
            cohorts.get("canary", CohortStats()), cohorts.get("stable", CohortStats()), reading.next_offset
        )

    async def _source(self, needs: Needs) -> SourceSample:
        """Asks the metric source (observe() calls it only when `needs` asks it and it is configured)."""
        s = self.loaded.snapshot
        assert needs.source_window is not None and s.config.prometheus is not None
        by_address = address_cohorts(s)  # blue_green: green's instances are the canary's

        def cohort(name: Cohort, version: str) -> CohortQuery:
            return CohortQuery(name, tuple(a for a, c in by_address.items() if c == name), version)

        queries = [cohort("canary", s.version), cohort("stable", s.previous_version)]
        try:
            read = await self.outside.source(s.config.prometheus, queries, needs.source_window)
        except MetricSourceError as exc:
            return SourceSample(error=str(exc), window_s=needs.source_window)
        return SourceSample(read["canary"], read["stable"], window_s=needs.source_window)


__all__ = ["DeployError", "Interpreter"]
