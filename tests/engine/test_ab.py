"""Strategy `ab` through the real driver, store and services against the in-memory world: the same
decision function and engine as a canary, with the canary serving only the requests its rules match."""

from __future__ import annotations

from typing import Any

import pytest

from .harness import harness
from .world import Behaviour

AB: dict[str, Any] = {
    "ab": {"match": [{"header": "X-Beta", "equals": "1"}, {"cookie": "plan", "equals": "pro"}]}
}


@pytest.mark.parametrize("judge", ["sequential", "threshold"])
async def test_healthy_ab_test_completes(db_url: str, judge: str) -> None:
    """A good version serves the matching requests for the test's one stage, is judged on them (by either
    judge), and is then promoted to every server; the random split never gives the canary a share."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "ab", judge=judge, **AB)
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert dep.strategy == "ab" and dep.canary_config["stages"] == [100.0]
        assert set(h.fleet.versions.values()) == {"v2"}
        events = await h.events(dep_id)
        advanced = [e for e in events if e.kind == "stage_advanced"]
        assert len(advanced) == 1 and advanced[0].traffic_percentage == 0.0
        assert "A/B test: requests with header X-Beta = 1 or cookie plan = pro" in advanced[0].reasons[0]
        judged = [e for e in events if e.kind in ("health_check", "promoted") and e.metrics.get("canary")]
        assert judged and judged[-1].metrics["canary"]["requests"] > 0
        assert judged[-1].metrics["stable"]["requests"] > judged[-1].metrics["canary"]["requests"]
        assert [e.kind for e in events][-1] == "completed"
        canary = tuple(int(i) for i in dep.canary_server_ids)
        assert h.fleet.rule_bound and all(
            bound == canary and not set(bound) & set(split) for bound, split in h.fleet.rule_bound
        ), h.fleet.rule_bound
        served = h.outside.memory_proxy.serving
        assert served is not None and not any(b.match for b in served.backends)
        h.restore_order_ok("v2")


async def test_bad_ab_test_rolls_back(db_url: str) -> None:
    """A version answering 30 % errors to the matching requests is rolled back, naming the metric."""
    async with harness(db_url) as h:
        h.fleet.behaviours["v2"] = Behaviour(error_rate=0.3)
        dep_id = await h.deploy("v2", "ab", **AB)
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert any("error_rate" in r for r in dep.reasons), dep.reasons
        assert set(h.fleet.versions.values()) == {"v1"}
        h.restore_order_ok("v2")


async def test_no_matching_traffic_never_promotes(db_url: str) -> None:
    """No request matches: the test stays inconclusive and, with the default policy, pauses for a person
    instead of promoting without evidence (the judge expects no share, so no 'no data' failure)."""
    async with harness(db_url) as h:
        h.fleet.matching_share = 0.0
        dep_id = await h.deploy("v2", "ab", **AB)
        dep = await h.run(dep_id, until={"paused", "completed", "rolled_back"}, max_ticks=400)
        assert dep.canary_status == "paused", dep.reasons
        assert any("not promoting without evidence" in r for r in dep.reasons), dep.reasons


@pytest.mark.parametrize("state", ["deploying", "monitoring", "paused", "promoting"])
@pytest.mark.parametrize("action", ["rollback", "pause_resume"])
async def test_operator_actions_at_each_phase(db_url: str, state: str, action: str) -> None:
    """Rollback (every active phase) and pause then resume (where allowed) act on an A/B test as on a
    canary: a rollback ends with the previous version everywhere, a resumed test completes."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", "ab", **AB)
        target = "monitoring" if state == "paused" else state
        await h.run(dep_id, until={target}, max_ticks=200)
        if state == "paused":
            await h.act(dep_id, "pause")
        if action == "rollback":
            await h.act(dep_id, "rollback", reason="operator says no")
            dep = await h.run(dep_id)
            assert dep.canary_status == "rolled_back", dep.reasons
            assert set(h.fleet.versions.values()) == {"v1"}
            h.restore_order_ok("v2")
            return
        if state == "promoting":
            with pytest.raises(Exception, match="cannot pause"):
                await h.act(dep_id, "pause")
        elif state != "paused":
            await h.act(dep_id, "pause")
            assert (await h.status(dep_id)).canary_status == "paused"
        if state != "promoting":
            await h.act(dep_id, "resume")
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert set(h.fleet.versions.values()) == {"v2"}
