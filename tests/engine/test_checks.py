"""Webhook checks in whole rollouts, in virtual time: the in-memory world answers each check as scripted
(tests/engine/world.py `check_answers`), through the real driver, store, services and SQLite database."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from typing import Any

from canaryd.engine.checks import SIGNATURE_HEADER
from canaryd.observability import rollback_reason

from .harness import Harness, harness
from .world import Behaviour, Crash

SECRET = "s3cret-for-tests"


def check(name: str, point: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "point": point, "url": f"http://127.0.0.1:9/{name}", **more}


def calls(h: Harness, point: str) -> list[dict[str, Any]]:
    return [c for c in h.fleet.check_calls if c["point"] == point]


async def run_until_event(h: Harness, dep_id: int, kind: str, max_ticks: int = 100) -> None:
    for _ in range(max_ticks):
        if any(e.kind == kind for e in await h.events(dep_id)):
            return
        assert await h.step()
    raise AssertionError(f"no {kind} event")


async def test_pre_stage_check_holds_on_503_then_proceeds_on_200(db_url: str) -> None:
    """A blocking pre-stage check that answers 503 holds the previous split with its answer as the reason,
    is tried again each check interval, and lets the stage start once it answers 200; the call is signed."""
    async with harness(db_url) as h:
        h.fleet.check_answers["gate"] = [(503, "load test\nstill running"), (503, "busy"), (200, "ok")]
        dep_id = await h.deploy("v2", checks=[check("gate", "pre_stage", stages=[25], secret=SECRET)])
        await run_until_event(h, dep_id, "check_failed")
        dep = await h.status(dep_id)
        assert dep.canary_status == "monitoring" and dep.current_canary_stage == 0
        assert dep.canary_traffic_percentage == 10.0
        assert (
            dep.reasons[0] == "before stage 2 (25 %): check gate refused: HTTP 503: load test still running"
        )
        assert "try 1 of 4" in dep.reasons[1], dep.reasons
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        gate = calls(h, "pre_stage")
        assert len(gate) == 3 and {c["stage"] for c in gate} == {2}
        assert (gate[1]["at"] - gate[0]["at"]).total_seconds() == 10  # the next check interval
        events = await h.events(dep_id)
        kinds = [e.kind for e in events if e.kind.startswith("check_") or e.stage == 2]
        assert kinds[:4] == ["check_failed", "check_failed", "check_passed", "stage_advanced"], kinds
        first = gate[0]
        body = json.dumps(
            {k: v for k, v in first.items() if k not in ("headers", "at")},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert first["headers"][SIGNATURE_HEADER] == expected
        sent = first["deployment"]
        assert sent["id"] == dep_id and sent["canary_status"] == "monitoring"
        assert sent["config"]["checks"][0]["secret"] == "[redacted]"
        assert SECRET not in json.dumps([e.metrics for e in events] + [e.reasons for e in events])


async def test_rollback_failure_action(db_url: str) -> None:
    """A check still refusing after its retries applies its failure action: here, roll back."""
    async with harness(db_url) as h:
        h.fleet.check_answers["gate"] = [(500, "nope")]
        spec = check("gate", "pre_stage", stages=[25], retries=1, failure_action="rollback")
        dep_id = await h.deploy("v2", checks=[spec])
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert dep.reasons[0] == "before stage 2 (25 %): check gate refused: HTTP 500: nope"
        assert "rolling back (failure_action rollback, after 2 tries)" in dep.reasons[1]
        assert len(calls(h, "pre_stage")) == 2
        assert set(h.fleet.versions.values()) == {"v1"}
        started = next(e for e in await h.events(dep_id) if e.kind == "rollback_started")
        assert (
            rollback_reason({"actor": started.actor, "metrics": started.metrics}) == "check"
        )  # /metrics label
        h.restore_order_ok("v2")


async def test_pause_and_ignore_failure_actions(db_url: str) -> None:
    """pause asks a person (resuming tries the gate afresh); ignore goes on without the check."""
    async with harness(db_url) as h:
        h.fleet.check_answers["p"] = [(503, "no"), (200, "ok")]
        h.fleet.check_answers["i"] = [(0, "")]
        checks = [
            check("p", "pre_stage", stages=[50], retries=0, failure_action="pause"),
            check("i", "pre_stage", stages=[25], retries=0, failure_action="ignore"),
        ]
        dep_id = await h.deploy("v2", checks=checks)
        dep = await h.run(dep_id, until={"paused", "completed", "rolled_back"})
        assert dep.canary_status == "paused" and dep.current_canary_stage == 1, dep.reasons
        assert "check p refused: HTTP 503: no" in dep.reasons[0]
        await h.act(dep_id, "resume")
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert len(calls(h, "pre_stage")) == 3  # i once (ignored), p refused, p passed after the resume
        ignored = [
            e for e in await h.events(dep_id) if e.kind == "check_failed" and e.metrics["check"] == "i"
        ]
        assert ignored[0].metrics["error"] == "connection refused"


async def test_pre_promote_holds_until_it_passes(db_url: str) -> None:
    """pre_promote holds the last stage until the check answers 2xx, then promotion starts."""
    async with harness(db_url) as h:
        h.fleet.check_answers["ship"] = [(409, "change freeze"), (409, "change freeze"), (204, "")]
        dep_id = await h.deploy("v2", checks=[check("ship", "pre_promote")])
        await run_until_event(h, dep_id, "check_failed")
        dep = await h.status(dep_id)
        assert dep.canary_status == "monitoring" and dep.current_canary_stage == 3
        assert "before promotion: check ship refused: HTTP 409: change freeze" in dep.reasons[0]
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed"
        kinds = [e.kind for e in await h.events(dep_id)]
        assert kinds.index("check_passed") == kinds.index("promoted") - 1
        assert len(calls(h, "pre_promote")) == 3


async def test_failing_canary_still_rolls_back_while_a_check_holds(db_url: str) -> None:
    """While a pre-stage check holds, the stage is still judged: a bad canary is rolled back."""
    async with harness(db_url, behaviours={"v2": Behaviour(error_rate=0.3)}) as h:
        h.fleet.check_answers["gate"] = [(503, "never")]
        dep_id = await h.deploy("v2", stage_duration=60, checks=[check("gate", "pre_stage", stages=[25])])
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert any("error_rate" in r for r in dep.reasons), dep.reasons


async def test_post_rollback_fires_once_and_never_blocks(db_url: str) -> None:
    """A post_rollback check is called once when the rollback finishes (its tries at once); a refusal is
    recorded and the deployment still ends rolled_back."""
    async with harness(db_url, behaviours={"v2": Behaviour(error_rate=0.3)}) as h:
        h.fleet.check_answers["tell"] = [(500, "down")]
        dep_id = await h.deploy("v2", checks=[check("tell", "post_rollback", retries=2, timeout=5)])
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        tell = calls(h, "post_rollback")
        assert len(tell) == 3 and tell[0]["deployment"]["canary_status"] == "rolling_back"
        assert (tell[2]["at"] - tell[0]["at"]).total_seconds() == 2  # a second between tries, in one tick
        events = [e for e in await h.events(dep_id) if e.kind == "check_failed"]
        assert len(events) == 1 and events[0].metrics["tries"] == 3
        assert [e.kind for e in await h.events(dep_id)][-1] == "rolled_back"


async def test_post_rollback_not_called_on_success(db_url: str) -> None:
    """A completed rollout calls no post_rollback check; during_stage is called once per stage."""
    async with harness(db_url) as h:
        h.fleet.check_answers["load"] = [(500, "ignored")]
        checks = [check("tell", "post_rollback"), check("load", "during_stage", retries=0)]
        dep_id = await h.deploy("v2", checks=checks)
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed"
        assert not calls(h, "post_rollback")
        assert [c["stage"] for c in calls(h, "during_stage")] == [1, 2, 3, 4]


async def test_during_stage_rollback(db_url: str) -> None:
    """A during_stage check configured to roll back does so when it refuses."""
    async with harness(db_url) as h:
        h.fleet.check_answers["load"] = [(200, "ok"), (503, "load test failed")]
        spec = check("load", "during_stage", retries=0, failure_action="rollback")
        dep_id = await h.deploy("v2", checks=[spec])
        dep = await h.run(dep_id)
        assert dep.canary_status == "rolled_back"
        assert dep.reasons[0] == "during stage 2 (25 %): check load refused: HTTP 503: load test failed"


async def test_pre_deploy_gate(db_url: str) -> None:
    """Nothing is deployed until the pre_deploy check answers 2xx."""
    async with harness(db_url) as h:
        h.fleet.check_answers["ready"] = [(503, "not yet"), (200, "ok")]
        dep_id = await h.deploy("v2", checks=[check("ready", "pre_deploy")])
        await run_until_event(h, dep_id, "check_failed")
        dep = await h.status(dep_id)
        assert dep.canary_status == "deploying" and "not yet" in dep.reasons[0]
        assert not [e for e in h.fleet.log if e[0] == "deploy"]
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed"
        assert len(calls(h, "pre_deploy")) == 2


async def test_crash_after_a_passed_check_then_a_fresh_tick(db_url: str) -> None:
    """A tick killed after its check passed and before the new split was applied records nothing; the
    next tick (after the reconciler) calls the check again and starts the stage once."""
    async with harness(db_url) as h:
        dep_id = await h.deploy("v2", checks=[check("gate", "pre_stage", stages=[50])])
        armed = {"checked": False}

        def hook(point: str) -> None:
            if point == "check":
                armed["checked"] = True
            elif point == "routes" and armed["checked"]:
                h.fleet.before_effect = lambda _: None
                raise Crash(point)

        h.fleet.before_effect = hook
        for _ in range(200):
            dep = await h.status(dep_id)
            if dep.canary_status in ("completed", "rolled_back"):
                break
            with contextlib.suppress(Crash):
                assert await h.step()
            await h.check_invariants(dep_id)
        assert dep.canary_status == "completed"
        gate = calls(h, "pre_stage")
        assert len(gate) == 2 and {c["stage"] for c in gate} == {3}
        events = await h.events(dep_id)
        assert [e.kind for e in events].count("check_passed") == 1  # the killed tick recorded nothing
        assert [e.stage for e in events if e.kind == "stage_advanced"] == [1, 2, 3, 4]


async def test_pre_stage_check_comes_before_the_approval(db_url: str) -> None:
    """At a stage that also waits for a person, its pre_stage check is called first; the approval then
    starts the stage without calling it again, and its during_stage check runs at the stage's first tick."""
    async with harness(db_url) as h:
        h.fleet.check_answers["gate"] = [(503, "not yet"), (200, "ok")]
        checks = [check("gate", "pre_stage", stages=[50]), check("load", "during_stage", stages=[50])]
        dep_id = await h.deploy("v2", approve_before=[50], checks=checks)
        dep = await h.run(dep_id, until={"waiting_for_approval", "completed", "rolled_back"})
        assert dep.canary_status == "waiting_for_approval" and dep.current_canary_stage == 1
        assert len(calls(h, "pre_stage")) == 2 and not calls(h, "during_stage")
        await h.act(dep_id, "promote", to="next")
        dep = await h.run(dep_id)
        assert dep.canary_status == "completed", dep.reasons
        assert len(calls(h, "pre_stage")) == 2
        assert [c["stage"] for c in calls(h, "during_stage")] == [3]
