"""Strategy `blue_green` through the real driver, store and services against an in-memory world whose servers
run two instances each (blue on the application's port, green on its green_port): the same decision function
and engine as a canary, with its own steps (domain/bluegreen.py)."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from canaryd.db.models import Application, Server
from canaryd.domain.types import Cohort, CohortStats
from canaryd.metrics.health import HealthResult
from canaryd.proxies.base import RouteTable, TrafficReading
from canaryd.transports.base import CommandResult

from .harness import Harness, harness_of
from .test_crashes import crash_at, run_through_crash
from .world import (
    Behaviour,
    FakeClock,
    Fleet,
    MemoryOutside,
    MemoryProxy,
    MemoryTransport,
)

BLUE, GREEN = 8000, 8001
BG: dict[str, Any] = {"blue_green": {"keep_old": 30}}
#: For the crash test, which runs a deployment once per point: fewer checks and watches.
SHORT: dict[str, Any] = {"blue_green": {"keep_old": 10}, "stage_duration": 20, "judge": "threshold"}


@dataclass
class TwinFleet(Fleet):
    """Servers with an instance per port: `instances` maps "host:port" to the version it runs."""

    instances: dict[str, str] = field(default_factory=dict)
    #: Requests the proxy sent to an instance that was not running (each a failed request for a client).
    failed: int = 0
    #: Tables the proxy was given that route to an instance that is not running.
    bad_tables: list[tuple[str, ...]] = field(default_factory=list)

    def running(self, port: int) -> dict[str, str]:
        return {a.rsplit(":", 1)[0]: v for a, v in self.instances.items() if a.endswith(f":{port}")}


class TwinProxy(MemoryProxy):
    fleet: TwinFleet

    async def apply(self, table: RouteTable) -> None:
        dead = tuple(
            f"{b.host}:{b.port}" for b in table.backends if f"{b.host}:{b.port}" not in self.fleet.instances
        )
        if dead:
            self.fleet.bad_tables.append(dead)
        await super().apply(table)

    async def read_traffic(
        self, offset: int, cohort_of: Callable[[str], Cohort | None], since: float | None = None
    ) -> TrafficReading:
        cohorts: dict[Cohort, CohortStats] = {"canary": CohortStats(), "stable": CohortStats()}
        for address, requests in self._count().items():
            version = self.fleet.instances.get(address)
            if version is None:
                self.fleet.failed += requests
                continue
            cohort = cohort_of(address)
            behaviour = self.fleet.behaviours.get(version, Behaviour())
            errors = round(requests * behaviour.error_rate)
            for i in range(requests):
                if cohort is not None:
                    cohorts[cohort].record(500 if i < errors else 200, behaviour.latency_ms)
        return TrafficReading(cohorts, self.offset)


class TwinTransport(MemoryTransport):
    """`deploy HOST VERSION PORT` starts an instance, `stop HOST PORT` stops one."""

    fleet: TwinFleet

    async def run(self, command: str, timeout: float) -> CommandResult:
        words = shlex.split(command)
        if words == ["true"]:
            return CommandResult(0, "", "")
        self.fleet.before_effect("deploy")
        if words[0] == "stop":
            # Count what was routed to it up to now, then stop it: requests after this would fail.
            self.fleet.instances.pop(f"{words[1]}:{words[2]}", None)
            self.fleet.log.append(("stop", words[1], int(words[2])))
            return CommandResult(0, "", "")
        _, host, version, port = words
        if self.fleet.behaviours.get(version, Behaviour()).deploy_fails:
            return CommandResult(1, "", f"cannot install {version}")
        self.fleet.instances[f"{host}:{port}"] = version
        self.fleet.log.append(("deploy", host, version, int(port)))
        return CommandResult(0, "", "")


class TwinOutside(MemoryOutside):
    fleet: TwinFleet

    def __init__(self, fleet: TwinFleet) -> None:
        super().__init__(fleet)
        self.memory_proxy = TwinProxy(fleet)

    def transport(self, server: Server) -> TwinTransport:
        return TwinTransport(self.fleet, server.host)

    async def health(self, host: str, port: int, path: str) -> HealthResult:
        version = self.fleet.instances.get(f"{host}:{port}")
        ok = version is not None and self.fleet.behaviours.get(version, Behaviour()).healthy
        return HealthResult(ok, 200 if ok else 503, "ok" if ok else "HTTP 503", 1.0)


@contextlib.asynccontextmanager
async def twins(db_url: str, servers: int = 3) -> AsyncIterator[Harness]:
    """An application on `servers` simulated servers, blue (v1) on port 8000, green_port 8001."""
    hosts = [f"10.0.0.{i + 1}" for i in range(servers)]
    fleet = TwinFleet(FakeClock(), dict.fromkeys(hosts, "v1"), instances={f"{h}:{BLUE}": "v1" for h in hosts})
    app_fields = {
        "port": BLUE,
        "green_port": GREEN,
        "deploy_command": "deploy {host} {version} {port}",
        "stop_command": "stop {host} {port}",
    }
    async with harness_of(db_url, fleet, TwinOutside(fleet), app_fields) as h:
        yield h


async def _app(h: Harness) -> Application:
    async with h.rt.sessions() as session:
        app = await session.get(Application, h.app_id)
        assert app is not None
        return app


def _fleet(h: Harness) -> TwinFleet:
    assert isinstance(h.fleet, TwinFleet)
    return h.fleet


def _stops_unrouted(h: Harness) -> None:
    """No instance was stopped while the proxy routed to it, and no table routed to a stopped instance."""
    fleet = _fleet(h)
    serving: tuple[Any, ...] = ()
    for entry in fleet.log:
        if entry[0] == "routes":
            serving = entry[1]  # type: ignore[assignment]
        elif entry[0] == "stop":
            assert fleet.failed == 0
    assert not fleet.bad_tables, fleet.bad_tables
    assert fleet.failed == 0, f"{fleet.failed} requests reached a stopped instance"
    del serving


async def test_good_version_switches_and_completes_then_next_goes_back(db_url: str) -> None:
    """Green is started beside blue on every server, tested on the matching requests only, switched to in
    one proxy change, blue kept for keep_old then stopped; ports trade places, and the next blue-green
    deployment starts on the old port. No request ever reaches a stopped instance."""
    async with twins(db_url) as h:
        dep_id = await h.deploy("v2", "blue_green", **BG)
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        fleet = _fleet(h)
        assert fleet.running(GREEN) == dict.fromkeys(h.hosts, "v2") and fleet.running(BLUE) == {}
        app = await _app(h)
        assert (app.port, app.green_port, app.current_version) == (GREEN, BLUE, "v2")
        kinds = [e.kind for e in await h.events(dep_id)]
        assert kinds.index("promoted") < kinds.index("traffic_switched") < kinds.index("instance_stopped")
        assert kinds.count("instance_stopped") == 3 and kinds[-1] == "completed"
        events = await h.events(dep_id)
        judged = [e for e in events if e.kind in ("health_check", "promoted") and e.metrics.get("canary")]
        assert judged and judged[-1].metrics["canary"]["requests"] > 0
        switched = next(e for e in events if e.kind == "traffic_switched")
        stopped = next(e for e in events if e.kind == "instance_stopped")
        assert (stopped.at - switched.at).total_seconds() >= 30
        # Every green was bound to the test rules while tested; none in the random split.
        assert fleet.rule_bound and all(
            all(i > 10**9 for i in b) and all(i < 10**9 for i in s) for b, s in fleet.rule_bound
        )
        served = h.outside.memory_proxy.serving
        assert served is not None and {(b.server_id, b.port) for b in served.backends} == {
            (1, GREEN),
            (2, GREEN),
            (3, GREEN),
        }
        _stops_unrouted(h)

        again = await h.deploy("v3", "blue_green", **BG)
        dep = await h.run(again)
        assert dep.canary_status == "completed", dep.reasons
        assert fleet.running(BLUE) == dict.fromkeys(h.hosts, "v3") and fleet.running(GREEN) == {}
        assert ((await _app(h)).port, (await _app(h)).green_port) == (BLUE, GREEN)
        _stops_unrouted(h)


async def test_bad_version_rolls_back_with_the_reason(db_url: str) -> None:
    """Green answering 30 % errors to the test requests is rolled back naming the metric: the proxy never
    switched, blue still serves, every green is stopped, the ports stay."""
    async with twins(db_url) as h:
        h.fleet.behaviours["v2"] = Behaviour(error_rate=0.3)
        dep_id = await h.deploy("v2", "blue_green", **BG)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert any("error_rate" in r for r in dep.reasons), dep.reasons
        fleet = _fleet(h)
        assert fleet.running(BLUE) == dict.fromkeys(h.hosts, "v1") and fleet.running(GREEN) == {}
        assert "traffic_switched" not in [e.kind for e in await h.events(dep_id)]
        assert ((await _app(h)).port, (await _app(h)).current_version) == (BLUE, "v1")
        _stops_unrouted(h)


async def test_unhealthy_green_never_gets_traffic(db_url: str) -> None:
    """A green that never passes its health check fails the deploy step and is rolled back before the test."""
    async with twins(db_url) as h:
        h.fleet.behaviours["v2"] = Behaviour(healthy=False)
        dep_id = await h.deploy("v2", "blue_green", deploy_timeout=5, **BG)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert any("health check" in r for r in dep.reasons), dep.reasons
        assert not _fleet(h).rule_bound
        assert _fleet(h).running(GREEN) == {}
        _stops_unrouted(h)


@pytest.mark.parametrize("phase", ["deploying", "monitoring", "switched"])
async def test_operator_rollback_at_each_phase(db_url: str, phase: str) -> None:
    """A person's rollback while green starts, while it is tested, or after the switch (blue still running):
    blue serves again (one proxy change), every green is stopped, nothing fails."""
    async with twins(db_url) as h:
        dep_id = await h.deploy("v2", "blue_green", **BG)
        if phase == "switched":
            await h.run(dep_id, until={"promoting"})
            await h.step()  # the switch
            assert (await h.status(dep_id)).switched_at is not None
        else:
            await h.run(dep_id, until={phase})
        await h.act(dep_id, "rollback", reason="operator says no")
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back", dep.reasons
        fleet = _fleet(h)
        assert fleet.running(BLUE) == dict.fromkeys(h.hosts, "v1") and fleet.running(GREEN) == {}
        served = h.outside.memory_proxy.serving
        assert served is not None and {b.port for b in served.backends} == {BLUE}
        if phase == "switched":  # one proxy change back to blue, before any green stopped
            routes = [e for e in fleet.log if e[0] in ("routes", "stop")]
            back = next(
                i
                for i, e in enumerate(routes)
                if e[0] == "routes" and all(sid < 10**9 for sid, _, _ in e[1]) and i > 0
            )
            assert all(e[0] == "stop" for e in routes[back + 1 :]), routes
        _stops_unrouted(h)


async def test_promote_switches_now_and_pause_holds_the_test(db_url: str) -> None:
    """Promote during the test switches at once; pause and resume hold and restart the test like a canary's."""
    async with twins(db_url) as h:
        dep_id = await h.deploy("v2", "blue_green", stage_duration=600, **BG)
        await h.run(dep_id, until={"monitoring"})
        await h.act(dep_id, "pause")
        assert (await h.status(dep_id)).canary_status == "paused"
        await h.act(dep_id, "resume")
        await h.act(dep_id, "promote")
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        events = await h.events(dep_id)
        assert [e.kind for e in events if e.actor == "operator"] == ["paused", "resumed", "promoted"]
        _stops_unrouted(h)


async def test_green_failing_after_the_switch_switches_back(db_url: str) -> None:
    """Green that starts answering errors after the switch, while blue still runs, is switched back at once
    by the watch (one proxy change), with the reason; green is then stopped and blue keeps serving."""
    async with twins(db_url) as h:
        dep_id = await h.deploy("v2", "blue_green", **BG)
        await h.run(dep_id, until={"promoting"})
        await h.step()  # the switch
        h.fleet.behaviours["v2"] = Behaviour(error_rate=0.3)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back", dep.reasons
        assert any(r.startswith("error_rate after the switch: green") for r in dep.reasons), dep.reasons
        fleet = _fleet(h)
        assert fleet.running(BLUE) == dict.fromkeys(h.hosts, "v1") and fleet.running(GREEN) == {}
        assert "instance_stopped" in [e.kind for e in await h.events(dep_id)]
        _stops_unrouted(h)


@pytest.mark.parametrize(
    ("behaviour", "ends"), [(Behaviour(), "completed"), (Behaviour(error_rate=0.3), "rolled_back")]
)
async def test_a_crash_at_any_point_ends_consistent(
    new_db: Callable[[], str], behaviour: Behaviour, ends: str
) -> None:
    """A crash before any effect or write of a blue-green deployment (the process killed there), then recovery
    through the reconciler: it still ends as it would have, with one version running on the right port of
    every server, and no request ever sent to a stopped instance."""
    async with twins(new_db(), servers=2) as h:
        seen: list[str] = []
        h.fleet.before_effect = seen.append
        h.fleet.behaviours["v2"] = behaviour
        await h.run(await h.deploy("v2", "blue_green", **SHORT))
    points = len(seen)
    assert points >= 8, points
    for k in range(1, points + 1):
        async with twins(new_db(), servers=2) as h:
            h.fleet.behaviours["v2"] = behaviour
            passed = crash_at(h, k)
            dep_id = await h.deploy("v2", "blue_green", **SHORT)
            assert await run_through_crash(h, dep_id), f"no crash at point {k}"
            dep = await h.status(dep_id)
            assert dep.canary_status == ends, (k, passed[-1], dep.reasons)
            fleet = _fleet(h)
            port, version = (GREEN, "v2") if ends == "completed" else (BLUE, "v1")
            assert fleet.running(port) == dict.fromkeys(h.hosts, version), (k, passed[-1], fleet.instances)
            assert fleet.running(BLUE if port == GREEN else GREEN) == {}, (k, passed[-1], fleet.instances)
            assert ((await _app(h)).port, (await _app(h)).current_version) == (port, version)
            await h.check_invariants(dep_id)
            _stops_unrouted(h)
