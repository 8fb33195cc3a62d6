"""`mirror.then: blue_green` through the real driver, store and services against the twin-instance world of
tests/engine/test_blue_green.py: green beside blue, copies of a share of requests to green while blue answers
every client, then blue_green's test, switch, keep_old and stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from canaryd.domain.strategy import GREEN_OFFSET

from .harness import record_tables
from .test_blue_green import BLUE, GREEN, _app, _fleet, _stops_unrouted, twins
from .test_crashes import crash_at, run_through_crash
from .world import Behaviour

MIRROR_BG: dict[str, Any] = {
    "mirror": {"percent": 20, "then": "blue_green"},
    "blue_green": {"keep_old": 30},
    "judge": "threshold",
}
#: For the crash test, which runs a deployment once per point: fewer checks and watches.
SHORT: dict[str, Any] = {
    **MIRROR_BG,
    "blue_green": {"keep_old": 10},
    "stage_duration": 10,
    "health_check_interval": 10,
}


async def test_good_version_mirrors_then_tests_then_switches(db_url: str) -> None:
    """Green starts beside blue; in stage 1 it gets copies of 20 % of requests and no live one (the judge
    counts the copies as green's); in stage 2 only the test requests; then the switch, blue kept keep_old
    then stopped, ports traded."""
    async with twins(db_url) as h:
        seen = record_tables(h)
        dep_id = await h.deploy("v2", "mirror", **MIRROR_BG)
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert dep.canary_config["stages"] == [50.0, 100.0]
        fleet = _fleet(h)
        assert fleet.running(GREEN) == dict.fromkeys(h.hosts, "v2") and fleet.running(BLUE) == {}
        app = await _app(h)
        assert (app.port, app.green_port, app.current_version) == (GREEN, BLUE, "v2")
        mirrored = [t for t in seen if any(b.mirror for b in t)]
        assert mirrored and all(
            {b.server_id for b in t if b.mirror} == {GREEN_OFFSET + i for i in (1, 2, 3)}
            and all(b.mirror == 20 and b.port == GREEN for b in t if b.mirror)
            and all(b.port == BLUE and b.cohort == "stable" for b in t if not b.mirror)
            for t in mirrored
        ), mirrored
        # Order: the mirror phase, then the rules, then green alone.
        first_rules = next(i for i, t in enumerate(seen) if any(b.match for b in t))
        assert seen.index(mirrored[-1]) < first_rules
        events = await h.events(dep_id)
        advanced = [e for e in events if e.kind == "stage_advanced"]
        assert [e.stage for e in advanced] == [1, 2]
        assert advanced[0].reasons[-1].startswith("mirror: 20 % of requests copied to the new version")
        assert advanced[1].reasons[-1].startswith("blue-green test:")
        judged = advanced[1].metrics  # the verdict on the mirror phase
        assert 0.1 < judged["canary"]["requests"] / judged["stable"]["requests"] < 0.3, judged
        kinds = [e.kind for e in events]
        assert kinds.index("promoted") < kinds.index("traffic_switched") < kinds.index("instance_stopped")
        _stops_unrouted(h)


@pytest.mark.parametrize("phase", ["mirror", "test"])
async def test_bad_version_or_operator_rolls_back_in_each_phase(db_url: str, phase: str) -> None:
    """Copies answered with 30 % errors roll back in the mirror phase (green never got a live request nor a
    test request); an operator's rollback in the test phase likewise: blue serves, every green stopped."""
    async with twins(db_url) as h:
        seen = record_tables(h)
        if phase == "mirror":
            h.fleet.behaviours["v2"] = Behaviour(error_rate=0.3)
        dep_id = await h.deploy("v2", "mirror", **MIRROR_BG)
        if phase == "test":
            while (await h.status(dep_id)).current_canary_stage < 1:
                assert await h.step()
            await h.act(dep_id, "rollback", reason="operator says no")
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back", dep.reasons
        said = "error_rate" if phase == "mirror" else "operator says no"
        assert any(said in r for r in dep.reasons), dep.reasons
        fleet = _fleet(h)
        assert fleet.running(BLUE) == dict.fromkeys(h.hosts, "v1") and fleet.running(GREEN) == {}
        assert any(b.match for t in seen for b in t) is (phase == "test")
        assert all(b.cohort == "stable" or b.mirror or b.match for t in seen for b in t)
        assert ((await _app(h)).port, (await _app(h)).current_version) == (BLUE, "v1")
        _stops_unrouted(h)


async def test_a_crash_at_any_point_ends_consistent(new_db: Callable[[], str]) -> None:
    """A crash before any effect or write (the process killed there), then a fresh tick through the
    reconciler: the deployment still completes, green on every server's green port, blue stopped, and no
    request ever sent to a stopped instance."""
    async with twins(new_db(), servers=2) as h:
        seen: list[str] = []
        h.fleet.before_effect = seen.append
        await h.run(await h.deploy("v2", "mirror", **SHORT))
    points = len(seen)
    assert points >= 8, points
    for k in range(1, points + 1):
        async with twins(new_db(), servers=2) as h:
            passed = crash_at(h, k)
            dep_id = await h.deploy("v2", "mirror", **SHORT)
            assert await run_through_crash(h, dep_id), f"no crash at point {k}"
            dep = await h.status(dep_id)
            assert dep.canary_status == "completed", (k, passed[-1], dep.reasons)
            fleet = _fleet(h)
            assert fleet.running(GREEN) == dict.fromkeys(h.hosts, "v2"), (k, passed[-1], fleet.instances)
            assert fleet.running(BLUE) == {}, (k, passed[-1], fleet.instances)
            assert ((await _app(h)).port, (await _app(h)).current_version) == (GREEN, "v2")
            await h.check_invariants(dep_id)
            _stops_unrouted(h)
