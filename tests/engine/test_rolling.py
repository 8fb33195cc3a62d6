"""Strategy `rolling` through the real driver, store and services against the in-memory world: the same
decision function and engine as a canary, a batch of servers at a time, each batch drained before it is
deployed and judged against the servers not yet upgraded before the next one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from canaryd.domain.plan import UNKNOWN_VERSION

from .harness import Harness, harness
from .test_crashes import crash_at, run_through_crash
from .world import Behaviour

#: 5 servers, 2 at a time: batches of 2, 2 and 1 (stages 40, 80 and 100 %).
TWO: dict[str, Any] = {"rolling": {"batch_size": 2}, "judge": "threshold", "min_requests": 5}


def drained_at_most_one_batch(h: Harness, size: int) -> None:
    """No route table left out more servers than one batch, and none was ever empty."""
    for entry in h.fleet.log:
        if entry[0] == "routes":
            served = {sid for sid, _, _ in entry[1]}  # type: ignore[union-attr]
            assert served, "an empty pool"
            assert len(h.hosts) - len(served) <= size, f"more than one batch drained: {entry}"


@pytest.mark.parametrize("judge", ["threshold", "sequential"])
async def test_healthy_rolling_update_completes(db_url: str, judge: str) -> None:
    """Each batch is drained, deployed, put back at the others' weight and judged for its stage (by either
    judge); the last passes and the update completes with every server upgraded, never more than a batch
    drained."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "rolling", **{**TWO, "judge": judge})
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert dep.strategy == "rolling" and dep.canary_config["stages"] == [40.0, 80.0, 100.0]
        assert set(h.fleet.versions.values()) == {"v2"}
        events = await h.events(dep_id)
        advanced = [e for e in events if e.kind == "stage_advanced"]
        assert [e.traffic_percentage for e in advanced] == [40.0, 80.0, 100.0]
        assert advanced[1].reasons[-1] == "batch 2 of 3: servers s2, s3", advanced[1].reasons
        assert advanced[2].reasons[-1] == "batch 3 of 3: servers s4"
        started = [e for e in events if e.kind == "deploy_started"]
        assert len(started) == 3 and "batch 1 of 3: servers s0, s1" in started[0].reasons[0]
        # Every batch was judged (a health check with both cohorts' figures) before the next one started.
        kinds = [e.kind for e in events]
        for i in range(1, 3):
            before = kinds[: kinds.index("deploy_started", kinds.index("deploy_started") + i)]
            assert "health_check" in before[before.index("stage_advanced") :]
        judged = [e for e in events if e.kind == "health_check" and e.stage == 1]
        assert judged[-1].metrics["canary"]["requests"] > 0 and judged[-1].metrics["stable"]["requests"] > 0
        assert kinds[-1] == "completed" and "server_promoted" not in kinds  # nothing left to promote
        drained_at_most_one_batch(h, 2)
        h.restore_order_ok("v2")


async def test_status_messages_follow_each_batch(db_url: str) -> None:
    """The WebSocket's status messages (the bus) say which batch is deployed and which stage is judged, at
    the upgraded servers' share."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "rolling", **TWO)
        seen: list[dict[str, Any]] = []
        async with h.rt.bus.subscribe(dep_id) as stream:
            await h.run(dep_id)
            messages = stream.__aiter__()
            with contextlib.suppress(TimeoutError):
                while True:
                    seen.append(await asyncio.wait_for(messages.__anext__(), 0.05))
        statuses = [m for m in seen if m["type"] == "status"]
        judged = {
            (m["current_stage"], m["target_traffic_percentage"], m["current_traffic_percentage"])
            for m in statuses
            if m["canary_status"] == "monitoring" and not any("deploying" in r for r in m["reasons"])
        }
        assert {(1, 40.0, 40.0), (2, 80.0, 80.0), (3, 100.0, 100.0)} <= judged, judged
        deploying = [r for m in statuses for r in m["reasons"] if ": deploying s" in r]
        assert "batch 2 of 3: servers s2, s3: deploying s2" in deploying, deploying
        assert statuses[-1]["canary_status"] == "completed"
        assert [m["kind"] for m in seen if m["type"] == "event"][-1] == "completed"


async def test_batch_is_drained_until_all_of_it_is_healthy(db_url: str) -> None:
    """While a batch is deployed its servers are absent (also the one already upgraded); the servers of
    earlier batches serve as canaries at the weight of every other server."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "rolling", **TWO)
        await h.run(dep_id, until={"monitoring"})
        while (await h.status(dep_id)).canary_server_ids == [1, 2]:
            await h.step()
        dep = await h.status(dep_id)
        assert dep.canary_server_ids == [1, 2, 3, 4] and dep.current_canary_stage == 0
        served = h.outside.memory_proxy.serving
        assert served is not None
        assert [(b.server_id, b.weight, b.cohort) for b in served.backends] == [
            (1, 1, "canary"),
            (2, 1, "canary"),
            (5, 1, "stable"),
        ]
        await h.step()  # deploys s2: still out
        assert (await h.status(dep_id)).server_versions["3"] == "v2"
        assert [b.server_id for b in h.outside.memory_proxy.serving.backends] == [1, 2, 5]  # type: ignore[union-attr]
        await h.step()  # deploys s3
        await h.step()  # the batch is back and its stage starts
        dep = await h.status(dep_id)
        assert dep.current_canary_stage == 1
        assert [b.weight for b in h.outside.memory_proxy.serving.backends] == [1] * 5  # type: ignore[union-attr]


async def test_bad_batch_rolls_back_every_upgraded_server(db_url: str) -> None:
    """The second batch runs a version that fails 30 % of requests (the first was fine): its stage fails
    against the servers not yet upgraded, the canary traffic is cut first and every upgraded server gets
    the previous version back."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "rolling", **TWO)
        await h.run(dep_id, until={"monitoring"})
        while (await h.status(dep_id)).current_canary_stage == 0:
            await h.step()
        h.fleet.behaviours["v2"] = Behaviour(error_rate=0.3)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert any("error_rate" in r for r in dep.reasons), dep.reasons
        assert set(h.fleet.versions.values()) == {"v1"}
        events = await h.events(dep_id)
        assert [e.stage for e in events if e.kind == "rollback_started"] == [2]
        restored = [e.metrics["server"] for e in events if e.kind == "server_restored"]
        assert sorted(restored) == ["s0", "s1", "s2", "s3"]
        h.restore_order_ok("v2")


async def test_unhealthy_batch_rolls_back(db_url: str) -> None:
    """A deploy that never becomes healthy stops at its batch: nothing later is touched."""
    async with harness(db_url) as h:
        h.fleet.behaviours["v2"] = Behaviour(healthy=False)
        dep_id = await h.deploy("v2", "rolling", **TWO)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back", dep.reasons
        assert set(h.fleet.versions.values()) == {"v1"}
        assert not any(e[0] == "deploy" and e[1] in h.hosts[2:] for e in h.fleet.log)


async def _at(h: Harness, dep_id: int, phase: str) -> None:
    """Runs to `phase`: deploying (batch 1), judging (batch 1's stage), batch (batch 2 being deployed) or
    promoting."""
    if phase == "deploying":
        await h.run(dep_id, until={"deploying"})
        return
    if phase == "promoting":
        await h.run(dep_id, until={"monitoring"})
        await h.act(dep_id, "promote")
        return
    await h.run(dep_id, until={"monitoring"})
    if phase == "batch":
        while (await h.status(dep_id)).canary_server_ids == [1, 2]:
            await h.step()
        await h.step()  # one server of the batch deployed


@pytest.mark.parametrize("phase", ["deploying", "judging", "batch", "promoting"])
async def test_operator_rollback_at_each_phase(db_url: str, phase: str) -> None:
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "rolling", **TWO)
        await _at(h, dep_id, phase)
        await h.act(dep_id, "rollback", reason="operator says no")
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back", dep.reasons
        assert set(h.fleet.versions.values()) == {"v1"}
        assert any("rollback by operator: operator says no" in r for r in dep.reasons), dep.reasons
        h.restore_order_ok("v2")


@pytest.mark.parametrize("phase", ["deploying", "judging", "batch"])
async def test_pause_and_resume_at_each_phase(db_url: str, phase: str) -> None:
    """A pause holds the update where it is (a batch being deployed stays drained); resumed, it completes."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "rolling", **TWO)
        await _at(h, dep_id, phase)
        await h.act(dep_id, "pause")
        served = h.outside.memory_proxy.serving
        dep = await h.run(dep_id, until={"completed"}, max_ticks=5)
        assert dep.canary_status == "paused"
        if phase == "batch":
            assert served is not None and [b.server_id for b in served.backends] == [1, 2, 5]
        with pytest.raises(Exception, match="paused rolling update starts no batch"):
            await h.act(dep_id, "promote", to="next")
        await h.act(dep_id, "resume")
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert set(h.fleet.versions.values()) == {"v2"}
        drained_at_most_one_batch(h, 2)


async def test_promote_to_next_starts_the_next_batch_now(db_url: str) -> None:
    """promote {"to": "next"} skips the rest of the stage's judging and starts the next batch; refused while
    a batch is being deployed (two batches would be drained); a plain promote upgrades the rest."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "rolling", **TWO)
        await h.run(dep_id, until={"monitoring"})
        await h.act(dep_id, "promote", to="next")
        dep = await h.status(dep_id)
        assert dep.canary_server_ids == [1, 2, 3, 4] and dep.canary_status == "monitoring"
        with pytest.raises(Exception, match="cannot start the next batch while batch 2 of 3"):
            await h.act(dep_id, "promote", to="next")
        await h.step()
        await h.step()
        await h.step()
        dep = await h.status(dep_id)
        assert dep.current_canary_stage == 1
        await h.act(dep_id, "promote")
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed"
        assert set(h.fleet.versions.values()) == {"v2"}
        events = await h.events(dep_id)
        assert any(e.kind == "deploy_started" and e.actor == "operator" for e in events)
        assert [e.metrics["server"] for e in events if e.kind == "server_promoted"] == ["s4"]
        drained_at_most_one_batch(h, 2)
        h.restore_order_ok("v2")


@pytest.mark.parametrize(
    ("name", "behaviours", "ends", "version"),
    [
        ("healthy", {}, "completed", "v2"),
        ("bad", {"v2": Behaviour(error_rate=0.3)}, "rolled_back", "v1"),
    ],
)
async def test_crash_between_effects_then_fresh_tick(
    new_db: Callable[[], str], name: str, behaviours: dict[str, Behaviour], ends: str, version: str
) -> None:
    """The process dies before each effect or write of a rolling update in turn (every 4th point, to stay
    quick); a fresh tick from the reconciler carries it to the same end, every server change recorded
    once, no server changed while routed to and no more than one batch ever drained."""
    async with harness(new_db(), servers=4, behaviours=behaviours) as h:
        seen = crash_at(h, 10**9)
        await h.run(await h.deploy("v2", "rolling", **TWO))
        points = len(seen)
    assert points > 20
    for k in range(1, points + 1, 4):
        async with harness(new_db(), servers=4, behaviours=behaviours) as h:
            dep_id = await h.deploy("v2", "rolling", **TWO)
            crash_at(h, k)
            assert await run_through_crash(h, dep_id), f"no crash at point {k}"
            dep = await h.status(dep_id)
            assert dep.canary_status == ends, (k, dep.reasons)
            assert set(h.fleet.versions.values()) == {version}, k
            assert UNKNOWN_VERSION not in dep.server_versions.values()
            drained_at_most_one_batch(h, 2)
            h.restore_order_ok("v2")


async def test_pre_stage_check_guards_each_batch_before_it_is_drained(db_url: str) -> None:
    """A pre_stage check is called before each batch (batch 1 before it is put back, later ones before they
    are drained); one that refuses batch 2 holds it out of reach: nothing of batch 2 is drained or deployed,
    and its failure_action rolls the update back."""
    async with harness(db_url) as h:
        h.fleet.check_answers["gate"] = [(200, "ok"), (503, "freeze")]
        gate = {"name": "gate", "point": "pre_stage", "url": "http://127.0.0.1:9/gate", "retries": 1}
        dep_id = await h.deploy("v2", "rolling", **TWO, checks=[{**gate, "failure_action": "rollback"}])
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back", dep.reasons
        calls = [c["stage"] for c in h.fleet.check_calls if c["point"] == "pre_stage"]
        assert calls == [1, 2, 2], calls
        assert dep.canary_server_ids == [1, 2]
        assert not any(e[0] == "deploy" and e[1] in h.hosts[2:] for e in h.fleet.log)
        drained_at_most_one_batch(h, 2)
        assert any("check gate refused: HTTP 503: freeze" in r for r in dep.reasons), dep.reasons
