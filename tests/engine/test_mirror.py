"""Strategy `mirror` through the real driver, store and services against the in-memory world: the same
decision function and engine as a canary; during the mirror phase the canary servers take no live request
and get copies of a share of them, and the judge compares their answers with stable's."""

from __future__ import annotations

from typing import Any

import pytest

from .harness import harness, record_tables
from .world import Behaviour

THEN_CANARY: dict[str, Any] = {"mirror": {"percent": 20}, "stages": [25, 100]}
THEN_STOP: dict[str, Any] = {"mirror": {"percent": 50, "then": "stop"}}


@pytest.mark.parametrize("judge", ["sequential", "threshold"])
async def test_mirror_then_canary_completes(db_url: str, judge: str) -> None:
    """A good version answers the copies of 20 % of requests (clients get stable), passes, then runs the
    canary stages 25 and 100 % and is promoted to every server."""
    async with harness(db_url) as h:
        seen = record_tables(h)
        dep_id = await h.deploy("v2", "mirror", judge=judge, **THEN_CANARY)
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert dep.canary_config["stages"] == [12.5, 25.0, 100.0]
        assert set(h.fleet.versions.values()) == {"v2"}
        events = await h.events(dep_id)
        advanced = [e for e in events if e.kind == "stage_advanced"]
        assert [e.traffic_percentage for e in advanced] == [0.0, 25.0, 100.0]
        assert advanced[0].reasons[-1] == "mirror: 20 % of requests copied to the canary; clients get stable"
        assert advanced[1].reasons[-1] == "stage 1 of 2: 25 %"
        # The mirror phase's table: every canary a mirror of 20 %, never in the split.
        canary = {int(i) for i in dep.canary_server_ids}
        mirrored = [t for t in seen if any(b.mirror for b in t)]
        assert mirrored and all(
            {b.server_id for b in t if b.mirror} == canary
            and all(b.mirror == 20 for b in t if b.mirror)
            and not any(b.cohort == "canary" and not b.mirror for b in t)
            for t in mirrored
        ), mirrored
        judged = next(e for e in events if e.kind == "stage_advanced" and e.stage == 2).metrics
        # The judge saw the copies (≈ 20 % of stable's requests) as the canary's.
        assert 0.1 < judged["canary"]["requests"] / judged["stable"]["requests"] < 0.3, judged
        h.restore_order_ok("v2")


async def test_mirror_then_stop_ends_without_promoting(db_url: str) -> None:
    """A good version passes its mirror test and, with then: stop, goes back to the previous version on
    every server without ever taking a live request; the history says that it passed."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "mirror", **THEN_STOP)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back", dep.reasons
        assert dep.canary_config["stages"] == [100.0]
        assert set(h.fleet.versions.values()) == {"v1"}
        events = await h.events(dep_id)
        kinds = [e.kind for e in events]
        assert "promoted" not in kinds and kinds[-1] == "rolled_back"
        started = next(e for e in events if e.kind == "rollback_started")
        assert "the mirror test passed and mirror.then is stop" in started.reasons[-1], started.reasons
        assert started.metrics["canary"]["requests"] > 0
        assert all(e.traffic_percentage in (None, 0.0) for e in events), [
            e.traffic_percentage for e in events
        ]
        h.restore_order_ok("v2")


@pytest.mark.parametrize("then", ["canary", "stop"])
async def test_bad_mirror_rolls_back_in_the_mirror_phase(db_url: str, then: str) -> None:
    """Copies answered with 30 % errors roll the version back during the mirror phase, naming the metric;
    no live request ever reached it."""
    async with harness(db_url) as h:
        h.fleet.behaviours["v2"] = Behaviour(error_rate=0.3)
        config = THEN_CANARY if then == "canary" else THEN_STOP
        dep_id = await h.deploy("v2", "mirror", **config)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert any("error_rate" in r for r in dep.reasons), dep.reasons
        assert set(h.fleet.versions.values()) == {"v1"}
        events = await h.events(dep_id)
        assert max(e.stage or 0 for e in events) == 1
        h.restore_order_ok("v2")


@pytest.mark.parametrize("state", ["deploying", "monitoring", "paused"])
async def test_operator_rollback_and_pause_in_the_mirror_phase(db_url: str, state: str) -> None:
    """An operator's rollback in each phase of a mirror test ends with the previous version everywhere; a
    paused mirror phase keeps copying (the canary still only gets copies) and completes once resumed."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "mirror", **THEN_CANARY)
        await h.run(dep_id, until={"monitoring" if state == "paused" else state}, max_ticks=200)
        if state == "paused":
            await h.act(dep_id, "pause")
            assert h.outside.memory_proxy.serving is not None
            assert any(b.mirror for b in h.outside.memory_proxy.serving.backends)
            await h.act(dep_id, "resume")
            dep = await h.run(dep_id)
            assert dep.canary_status == "completed", dep.reasons
            return
        await h.act(dep_id, "rollback", reason="operator says no")
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back", dep.reasons
        assert any("operator says no" in r for r in dep.reasons), dep.reasons
        assert set(h.fleet.versions.values()) == {"v1"}
        h.restore_order_ok("v2")


async def test_operator_promote_overrides_then_stop(db_url: str) -> None:
    """then: stop only replaces the judge's promotion: an operator's promote is a decision, and promotes."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "mirror", **THEN_STOP)
        await h.run(dep_id, until={"monitoring"}, max_ticks=200)
        await h.act(dep_id, "promote", reason="good enough")
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert set(h.fleet.versions.values()) == {"v2"}
