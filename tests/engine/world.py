"""In-memory doubles of canaryd's own protocols (Proxy, Transport, Outside, Clock, TickScheduler), for the
engine's fast tests. They stand in for nothing a real-part test covers: tests/e2e, tests/proxies and
tests/reliability drive the real nginx, HAProxy, sshd and sample apps.

A `Fleet` simulates servers and versions deterministically: the proxy splits a fixed request rate by its
weights, and each version answers with its `Behaviour` (error rate, latency, health).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from canaryd.db.models import Application, Server
from canaryd.domain.config import PrometheusSource
from canaryd.domain.types import Cohort, CohortStats, HostLoad
from canaryd.engine.checks import CheckAnswer, CheckRequest
from canaryd.metrics.health import HealthResult
from canaryd.metrics.prometheus import CohortQuery, MetricSourceError
from canaryd.proxies.base import ProxyConfigError, ProxyUnavailableError, RouteTable, TrafficReading
from canaryd.transports.base import CommandResult, TransportError

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Crash(BaseException):
    """Raised by a double to stop a tick dead, as SIGKILL would: nothing after it runs, nothing commits."""


class FakeClock:
    """Virtual time. `sleep` advances it (only the deploy health gate sleeps on it)."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.at = start

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return (self.at - EPOCH).total_seconds()

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Behaviour:
    """How a version answers."""

    error_rate: float = 0.0
    latency_ms: float = 5.0
    healthy: bool = True
    deploy_fails: bool = False


@dataclass
class Fleet:
    """Every simulated server (by host), what it runs, and what goes wrong."""

    clock: FakeClock
    versions: dict[str, str]
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    requests_per_second: float = 20.0
    #: The share of requests that match an A/B table's rules (strategy ab); they go to its rule-bound servers.
    matching_share: float = 0.2
    #: For each table applied with A/B rules: (servers bound to the rules, servers in the random split).
    rule_bound: list[tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    #: Hosts that refuse connections (transient), and hosts whose SSH host key is refused (permanent).
    unreachable: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    #: Health answers that fail regardless of version (flapping is done by changing this set).
    unhealthy_hosts: set[str] = field(default_factory=set)
    proxy_refuses: bool = False
    proxy_down: bool = False
    source_fails: bool = False
    #: Scripted answers of webhook checks by name, (status, body) in order; the last one repeats; status 0:
    #: no answer. Unscripted checks answer (200, "ok").
    check_answers: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: Every check call: its JSON body, with "headers" and "at" (virtual time) added.
    check_calls: list[dict[str, object]] = field(default_factory=list)
    #: Every effect as it reached the world: ("routes", backends) or ("deploy", host, version).
    log: list[tuple[object, ...]] = field(default_factory=list)
    #: Called before each effect; raise Crash from it to kill the tick there.
    before_effect: Callable[[str], None] = lambda _: None

    def behaviour(self, host: str) -> Behaviour:
        return self.behaviours.get(self.versions[host], Behaviour())


class MemoryProxy:
    """A proxy that serves what it was given, and counts requests split by weight at a fixed rate."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.serving: RouteTable | None = None
        self.offset = 0
        self.read_at = fleet.clock.now()

    async def apply(self, table: RouteTable) -> None:
        self.fleet.before_effect("routes")
        if self.fleet.proxy_down:
            raise ProxyUnavailableError("proxy: connection refused")
        if self.fleet.proxy_refuses:
            raise ProxyConfigError("proxy: configuration refused by its test")
        self._count()  # requests so far were routed by the old table
        self.serving = table
        self.fleet.log.append(("routes", tuple((b.server_id, b.weight, b.cohort) for b in table.backends)))
        if any(b.match for b in table.backends):
            bound = tuple(b.server_id for b in table.backends if b.match)
            self.fleet.rule_bound.append((bound, tuple(b.server_id for b in table.backends if not b.match)))

    async def verify(self, table: RouteTable) -> bool:
        return self.serving is not None and self.serving.generation == table.generation

    async def check(self, table: RouteTable) -> bool:
        return await self.verify(table)

    async def remove(self, app_id: int) -> None:
        self.serving = None

    async def verify_removed(self, app_id: int) -> bool:
        return self.serving is None

    async def traffic_offset(self) -> int:
        self._count()
        return self.offset

    async def read_traffic(
        self, offset: int, cohort_of: Callable[[str], Cohort | None], since: float | None = None
    ) -> TrafficReading:
        cohorts: dict[Cohort, CohortStats] = {"canary": CohortStats(), "stable": CohortStats()}
        for address, requests in self._count().items():
            cohort = cohort_of(address)
            if cohort is None:
                continue
            host = address.rsplit(":", 1)[0]
            behaviour = self.fleet.behaviour(host)
            errors = round(requests * behaviour.error_rate)
            for i in range(requests):
                cohorts[cohort].record(500 if i < errors else 200, behaviour.latency_ms)
        return TrafficReading(cohorts, self.offset)

    def _count(self) -> dict[str, int]:
        """Requests since the last count, split by the table being served (largest remainder)."""
        now = self.fleet.clock.now()
        total = int(self.fleet.requests_per_second * (now - self.read_at).total_seconds())
        self.read_at = now
        if self.serving is None or total <= 0:
            return {}
        backends = self.serving.backends
        bound = [b for b in backends if b.match]
        matched = total * self.fleet.matching_share if bound else 0.0
        weight = sum(b.weight for b in backends if not b.match and not b.mirror)
        shares = [
            matched / len(bound) if b.match else 0.0 if b.mirror else (total - matched) * b.weight / weight
            for b in backends
        ]
        counts = [int(x) for x in shares]
        for i in sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])[: total - sum(counts)]:
            counts[i] += 1
        self.offset += total
        out = {f"{b.host}:{b.port}": n for b, n in zip(backends, counts, strict=True) if n}
        # Strategy mirror: the mirrors take no request of the split (weight 0 there), and get copies of
        # their percent of all of them, shared between them.
        mirrors = [b for b in backends if b.mirror]
        for b in mirrors:
            out[f"{b.host}:{b.port}"] = round(total * b.mirror / 100 / len(mirrors))
        return {k: n for k, n in out.items() if n}


class MemoryTransport:
    """A server reached by command: `deploy HOST VERSION` installs VERSION; `true` answers."""

    def __init__(self, fleet: Fleet, host: str) -> None:
        self.fleet, self.host = fleet, host

    async def run(self, command: str, timeout: float) -> CommandResult:
        if self.host in self.fleet.refused:
            raise TransportError(f"ssh {self.host}: host key verification failed", permanent=True)
        if self.host in self.fleet.unreachable:
            raise TransportError(f"ssh {self.host}: cannot connect: connection refused")
        words = shlex.split(command)
        if words == ["true"]:
            return CommandResult(0, "", "")
        self.fleet.before_effect("deploy")
        _, host, version = words
        if self.fleet.behaviours.get(version, Behaviour()).deploy_fails:
            return CommandResult(1, "", f"cannot install {version}")
        self.fleet.versions[host] = version
        self.fleet.log.append(("deploy", host, version))
        return CommandResult(0, "", "")

    async def read_file(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        raise NotImplementedError

    async def file_size(self, path: str) -> int | None:
        raise NotImplementedError

    async def write_file(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    async def rename(self, src: str, dst: str) -> None:
        raise NotImplementedError

    async def remove(self, path: str) -> None:
        raise NotImplementedError

    async def unix_request(self, path: str, payload: bytes, timeout: float) -> bytes:
        raise NotImplementedError


class MemoryOutside:
    """The `Outside` port over a `Fleet`: one proxy, a transport per server, health and loads."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.memory_proxy = MemoryProxy(fleet)

    def proxy(self, app: Application, proxy_server: Server) -> MemoryProxy:
        return self.memory_proxy

    def transport(self, server: Server) -> MemoryTransport:
        return MemoryTransport(self.fleet, server.host)

    async def health(self, host: str, port: int, path: str) -> HealthResult:
        ok = self.fleet.behaviour(host).healthy and host not in self.fleet.unhealthy_hosts
        return HealthResult(ok, 200 if ok else 503, "ok" if ok else "HTTP 503", 1.0)

    async def host_load(self, server: Server) -> HostLoad:
        return HostLoad(10.0, 20.0)

    async def source(
        self, source: PrometheusSource, cohorts: Sequence[CohortQuery], window_s: int
    ) -> dict[Cohort, CohortStats]:
        if self.fleet.source_fails:
            raise MetricSourceError("prometheus: connection refused")
        return {q.cohort: CohortStats() for q in cohorts}

    async def call_check(self, request: CheckRequest) -> CheckAnswer:
        self.fleet.before_effect("check")
        payload = json.loads(request.body)
        self.fleet.check_calls.append(
            {**payload, "headers": dict(request.headers), "at": self.fleet.clock.now()}
        )
        script = self.fleet.check_answers.get(payload["check"], [])
        status, body = (script.pop(0) if len(script) > 1 else script[0]) if script else (200, "ok")
        if not status:
            return CheckAnswer(None, error="connection refused", ms=1.0)
        return CheckAnswer(status, body.encode(), ms=1.0)


@dataclass
class RecordingScheduler:
    """Ticks scheduled, in the order asked; the harness runs the due ones."""

    jobs: list[tuple[int, str, datetime]] = field(default_factory=list)

    async def schedule(self, deployment_id: int, token: str, at: datetime) -> None:
        self.jobs.append((deployment_id, token, at))

    def pop_next(self) -> tuple[int, str, datetime] | None:
        if not self.jobs:
            return None
        job = min(self.jobs, key=lambda j: j[2])
        self.jobs.remove(job)
        return job

    async def close(self) -> None:
        self.jobs.clear()
