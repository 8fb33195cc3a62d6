"""Whole rollouts against the in-memory world, in milliseconds of virtual time each: every row is one
scenario, run through the real driver, store, services and SQLite database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from canaryd.engine.scheduler import DatabaseUnavailableError

from .harness import harness
from .world import Behaviour, MemoryProxy


async def test_healthy_canary_completes(db_url: str) -> None:
    """A good version goes through every stage and ends on every server, with the split of each stage."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2")
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert set(h.fleet.versions.values()) == {"v2"}
        events = await h.events(dep_id)
        shares = [e.traffic_percentage for e in events if e.kind == "stage_advanced"]
        assert shares == [10.0, 25.0, 50.0, 100.0]
        kinds = [e.kind for e in events]
        assert kinds[:4] == ["deployment_created", "deploy_started", "server_deployed", "canary_deployed"]
        assert kinds[-1] == "completed" and kinds.count("server_promoted") == 4
        assert all(e.metrics["proxy"]["live_ms"] >= 0 for e in events if e.kind == "stage_advanced")
        h.restore_order_ok("v2")


@dataclass(frozen=True)
class Scenario:
    name: str
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    fleet: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: The end state, and words that its reasons or those of an event must contain.
    ends: str = "rolled_back"
    reason: str = ""
    #: The most ticks it may take (a runaway loop fails the row).
    max_ticks: int = 200


PROMETHEUS = {"metrics_source": "prometheus", "prometheus": {"url": "http://127.0.0.1:1/", "min_window": 1}}

SCENARIOS = [
    Scenario("bad: 30 % errors", {"v2": Behaviour(error_rate=0.3)}, reason="error_rate"),
    Scenario("slow: +300 ms", {"v2": Behaviour(latency_ms=300)}, reason="latency_tail"),
    Scenario("dead: never healthy", {"v2": Behaviour(healthy=False)}, reason="did not pass its health check"),
    Scenario(
        "deploy command fails", {"v2": Behaviour(deploy_fails=True)}, reason="deploy command on s0 exited 1"
    ),
    Scenario(
        "canary turns unhealthy while monitored",
        config={"max_failed_health_checks": 2},
        fleet={"dies_while_monitored": True},
        reason="health: 2 consecutive",
    ),
    Scenario(
        "no traffic: paused for a person",
        config={"inconclusive_action": "pause"},
        fleet={"rps": 0.0},
        ends="paused",
        reason="pausing for a person",
    ),
    Scenario(
        "no traffic: rolled back by policy",
        config={"inconclusive_action": "rollback"},
        fleet={"rps": 0.0},
        reason="still inconclusive",
    ),
    Scenario(
        "no traffic: proceed never promotes blind",
        fleet={"rps": 0.0},
        ends="paused",
        reason="not sending all traffic to the canary without evidence",
        max_ticks=400,
    ),
    Scenario(
        "analysis observe: a bad canary completes",
        {"v2": Behaviour(error_rate=0.3)},
        config={"analysis": "observe"},
        ends="completed",
        reason="analysis: observe",
    ),
    Scenario(
        "dry_run, the deprecated name of analysis observe: a bad canary completes",
        {"v2": Behaviour(error_rate=0.3)},
        config={"dry_run": True},
        ends="completed",
        reason="analysis: observe",
    ),
    Scenario(
        "source outage: pause",
        config=PROMETHEUS,
        fleet={"source_fails": True},
        ends="paused",
        reason="metric source: still failing after 3 tries; pausing",
    ),
    Scenario(
        "source outage: rollback",
        config={**PROMETHEUS, "source_failure_action": "rollback"},
        fleet={"source_fails": True},
        reason="still failing after 3 tries; rolling back",
    ),
    Scenario(
        "source outage: judge on the proxy",
        config={**PROMETHEUS, "source_failure_action": "proxy"},
        fleet={"source_fails": True},
        ends="completed",
    ),
    Scenario(
        "canary unreachable: retried, then rolled back, untouched",
        fleet={"unreachable_canary": True},
        settings={"max_retry_backoff": 2.0},
        reason="connection refused",
    ),
    Scenario(
        "canary host key refused: permanent, rolled back at once",
        fleet={"refused_canary": True},
        reason="host key verification failed",
    ),
    Scenario(
        "threshold judge: bad canary",
        {"v2": Behaviour(error_rate=0.3)},
        config={"judge": "threshold"},
        reason="error_rate",
    ),
    Scenario("threshold judge: good canary", config={"judge": "threshold"}, ends="completed"),
]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario(db_url: str, sc: Scenario) -> None:
    """Each scenario ends where it must, with the reason, the servers and the proxy consistent."""
    async with harness(db_url, behaviours=sc.behaviours, **sc.settings) as h:
        h.fleet.requests_per_second = sc.fleet.get("rps", 20.0)
        h.fleet.source_fails = sc.fleet.get("source_fails", False)
        canary_host = h.hosts[0]  # the least loaded (all equal): the first server
        if sc.fleet.get("unreachable_canary"):
            h.fleet.unreachable.add(canary_host)
        if sc.fleet.get("refused_canary"):
            h.fleet.refused.add(canary_host)
        dep_id = await h.deploy("v2", **sc.config)
        if sc.fleet.get("dies_while_monitored"):
            await h.run(dep_id, until={"monitoring"})
            h.fleet.behaviours["v2"] = Behaviour(healthy=False)
        dep = await h.run(dep_id, until={sc.ends}, max_ticks=sc.max_ticks)
        assert dep.canary_status == sc.ends, (dep.canary_status, dep.reasons)
        said = [*dep.reasons, *(r for e in await h.events(dep_id) for r in e.reasons)]
        assert any(sc.reason in r for r in said), dep.reasons
        if sc.ends == "rolled_back":
            assert set(h.fleet.versions.values()) == {"v1"}
            served = h.outside.memory_proxy.serving
            assert served is not None and len(served.backends) == len(h.hosts)
            h.restore_order_ok("v2")
        if sc.ends == "completed":
            assert set(h.fleet.versions.values()) == {"v2"}


async def test_permanent_refusal_is_not_retried_and_costs_nothing(db_url: str) -> None:
    """A canary whose host key is refused is not retried as transient: the first failure rolls back, the
    server keeps its version (never marked unknown) and the rollback ends rolled_back, not failed."""
    async with harness(db_url) as h:
        h.fleet.refused.add(h.hosts[0])
        dep_id = await h.deploy("v2")
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        events = await h.events(dep_id)
        assert [e.metrics.get("attempt") for e in events if e.kind == "step_failed"] == [1]
        assert dep.server_versions["1"] == "v1"
        assert not any(e.kind == "server_restored" for e in events)


async def test_flapping_health_below_the_limit_completes(db_url: str) -> None:
    """Two failed checks in a row, then healthy again: below max_failed_health_checks (3), it completes."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2")
        await h.run(dep_id, until={"monitoring"})
        host = h.hosts[0]
        for _ in range(2):
            h.fleet.unhealthy_hosts.add(host)
            assert await h.step()
        h.fleet.unhealthy_hosts.discard(host)
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        failures = [
            e.metrics["health"]["consecutive_failures"]
            for e in await h.events(dep_id)
            if e.kind == "health_check"
        ]
        assert max(failures) == 2


async def test_proxy_refusing_the_rollback_fails_then_recovers(db_url: str) -> None:
    """A rollback whose proxy change keeps failing becomes `failed` and keeps retrying; once the proxy takes
    the change again the deployment ends rolled_back."""
    async with harness(db_url, behaviours={"v2": Behaviour(error_rate=0.3)}, max_retry_backoff=2.0) as h:
        dep_id = await h.deploy("v2")
        await h.run(dep_id, until={"monitoring"})
        h.fleet.proxy_down = True
        dep = await h.run(dep_id, until={"failed"})
        assert dep.canary_status == "failed", dep.reasons
        h.fleet.proxy_down = False
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert set(h.fleet.versions.values()) == {"v1"}


async def test_rollback_cuts_the_canary_in_the_deciding_tick(db_url: str) -> None:
    """The tick that decides a rollback also takes the canary out of the proxy, before anything else."""
    async with harness(db_url, behaviours={"v2": Behaviour(error_rate=0.5)}) as h:
        dep_id = await h.deploy("v2")
        dep = await h.run(dep_id, until={"rolling_back"})
        assert dep.canary_status == "rolling_back"
        served = h.outside.memory_proxy.serving
        assert served is not None and {b.cohort for b in served.backends} == {"stable"}
        assert dep.canary_traffic_percentage == 0.0


async def test_approval_gate_holds_the_previous_split_until_approved(db_url: str) -> None:
    """approve_before [50]: after the 25 % stage the deployment waits (still at 25 %) however long, and
    continues into 50 % when a person resumes it, recorded with the actor."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", approve_before=[50])
        dep = await h.run(dep_id, until={"waiting_for_approval"})
        assert dep.canary_status == "waiting_for_approval"
        for _ in range(30):  # 5 minutes of checks: still waiting, still at 25 %
            assert await h.step()
        dep = await h.status(dep_id)
        assert (dep.canary_status, dep.canary_traffic_percentage) == ("waiting_for_approval", 25.0)
        status = await h.act(dep_id, "resume")
        assert status["canary_status"] == "monitoring" and status["waiting_for"] is None
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed"
        events = await h.events(dep_id)
        approved = [e for e in events if e.kind == "approved"]
        assert len(approved) == 1 and approved[0].actor == "operator" and approved[0].stage == 3
        assert [e.stage for e in events if e.kind == "stage_advanced"] == [1, 2, 4]


async def test_a_canary_that_turns_bad_while_waiting_is_rolled_back(db_url: str) -> None:
    """Waiting for approval, the canary is still judged: a regression rolls it back without a person."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", approve_before=[50])
        await h.run(dep_id, until={"waiting_for_approval"})
        h.fleet.behaviours["v2"] = Behaviour(error_rate=0.4)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert "error_rate" in " ".join(dep.reasons)
        assert set(h.fleet.versions.values()) == {"v1"}


async def test_approval_timeout_rolls_back_when_asked_to(db_url: str) -> None:
    """approval_timeout with approval_timeout_action rollback: no approval in time rolls back."""
    async with harness(db_url) as h:
        dep_id = await h.deploy(
            "v2", approve_before=[50], approval_timeout=120, approval_timeout_action="rollback"
        )
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert "no approval within 120 s" in " ".join(dep.reasons)


async def test_the_check_interval_counts_from_each_tick_start(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A monitoring tick that takes 3 s (a slow proxy log, the CPU sample) does not stretch the check interval:
    the next tick is due `health_check_interval` after the previous one began, not after it ended."""
    async with harness(db_url) as h:
        read_traffic = MemoryProxy.read_traffic

        async def slow_read(self: MemoryProxy, *args: Any, **kwargs: Any) -> Any:
            h.clock.advance(3.0)
            return await read_traffic(self, *args, **kwargs)

        monkeypatch.setattr(MemoryProxy, "read_traffic", slow_read)
        dep_id = await h.deploy("v2", health_check_interval=10)
        gaps = []
        while (await h.status(dep_id)).canary_status not in {"completed", "rolled_back"}:
            job = h.scheduler.pop_next()
            assert job is not None
            h.scheduler.jobs.append(job)
            started = max(job[2], h.clock.now())
            monitoring = (await h.status(dep_id)).canary_status == "monitoring"
            assert await h.step()
            following = min((j[2] for j in h.scheduler.jobs), default=None)
            if monitoring and following is not None:
                gaps.append((following - started).total_seconds())
        assert (await h.status(dep_id)).canary_status == "completed"
        # Shorter gaps are the ticks placed at a stage's end; without the fix every gap would be 13 s.
        assert len(gaps) >= 20 and max(gaps) == 10.0 and gaps.count(10.0) >= 0.75 * len(gaps), gaps


async def test_a_tick_the_database_cut_short_runs_again_at_once(db_url: str) -> None:
    """The database refuses a tick's commit (its lease is taken, nothing else written): the tick raises
    DatabaseUnavailableError, and the same tick run again takes its own lease back at once instead of waiting
    for the lease to run out; the rollout then completes."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2")
        for _ in range(3):  # into monitoring
            assert await h.step()
        job = h.scheduler.pop_next()
        assert job is not None
        commit = h.driver.store.commit
        refused = []

        async def refuse_once(*args: Any, **kwargs: Any) -> Any:
            if not refused:
                refused.append(True)
                raise ConnectionRefusedError(111, "Connect call failed")
            return await commit(*args, **kwargs)

        h.driver.store.commit = refuse_once  # type: ignore[method-assign]
        h.clock.at = max(h.clock.at, job[2])
        with pytest.raises(DatabaseUnavailableError, match="the database is unavailable"):
            await h.driver.tick(dep_id, job[1])
        assert (await h.status(dep_id)).lease_owner is not None  # the cut-short attempt still holds it
        assert await h.driver.tick(dep_id, job[1]), "the retry found its own lease busy"
        assert refused and h.scheduler.jobs, "the retried tick scheduled the next one"
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
