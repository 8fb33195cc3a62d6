"""Every operator action in every state: refused with a reason where the lifecycle forbids it (nothing
changes), carried through to a consistent end where it allows it."""

from __future__ import annotations

import pytest

from canaryd.domain.lifecycle import Lifecycle
from canaryd.domain.types import State
from canaryd.services.errors import Conflict

from .harness import Harness, harness
from .world import Behaviour

SHORT = {"stages": [25, 50, 100], "stage_duration": 20}
ACTIONS = [
    ("pause", "full"),
    ("resume", "full"),
    ("promote", "full"),
    ("promote", "next"),
    ("rollback", "full"),
]


async def reach(h: Harness, state: str) -> int:
    """Starts a deployment and takes it to `state`."""
    approvals = {"approve_before": [50]} if state == "waiting_for_approval" else {}
    dep_id = await h.deploy("v2", **SHORT, **approvals)
    if state == "pending":
        return dep_id
    if state == "deploying":
        await h.step()
        return dep_id
    await h.run(dep_id, until={"waiting_for_approval" if approvals else "monitoring"})
    if state == "paused":
        await h.act(dep_id, "pause")
    elif state == "promoting":
        await h.act(dep_id, "promote")
    elif state == "rolling_back":
        await h.act(dep_id, "rollback")
    elif state == "failed":
        h.fleet.proxy_down = True
        await h.act(dep_id, "rollback")
        await h.run(dep_id, until={"failed"})
    elif state in ("completed", "rolled_back"):
        if state == "rolled_back":
            await h.act(dep_id, "rollback")
        await h.run(dep_id)
    assert (await h.status(dep_id)).canary_status == state
    return dep_id


def allowed(state: str, action: str, to: str) -> bool:
    paused_from = State.MONITORING if state == "paused" else None
    if action == "promote" and to == "next":
        return state in ("monitoring", "waiting_for_approval", "paused")
    if action == "resume" and state == "waiting_for_approval":
        return True  # resume approves the stage it waits for
    return Lifecycle(State(state), paused_from).can(action)


STATES = [s.value for s in State]
PAIRS = [(s, a, t) for s in STATES for a, t in ACTIONS if allowed(s, a, t)]


@pytest.mark.parametrize("state", STATES)
async def test_refused_actions_change_nothing(db_url: str, state: str) -> None:
    """Each action the state forbids is a 409 with the reason, and the deployment is as it was."""
    async with harness(db_url, max_retry_backoff=2.0) as h:
        dep_id = await reach(h, state)
        before = await h.status(dep_id)
        events = len(await h.events(dep_id))
        for action, to in ACTIONS:
            if allowed(state, action, to):
                continue
            with pytest.raises(Conflict, match="cannot"):
                await h.act(dep_id, action, to)
        after = await h.status(dep_id)
        assert (after.canary_status, after.state_version, after.current_canary_stage) == (
            before.canary_status,
            before.state_version,
            before.current_canary_stage,
        )
        assert len(await h.events(dep_id)) == events


@pytest.mark.parametrize(("state", "action", "to"), PAIRS, ids=[f"{s}-{a}-{t}" for s, a, t in PAIRS])
async def test_allowed_action_reaches_a_consistent_end(db_url: str, state: str, action: str, to: str) -> None:
    """The action is recorded with its actor, and the deployment then ends with every server on one version
    and the proxy serving all of them."""
    async with harness(db_url, behaviours={"v2": Behaviour()}) as h:
        dep_id = await reach(h, state)
        status = await h.act(dep_id, action, to, reason="test")
        last = (await h.events(dep_id))[-1]
        assert last.actor == "operator" and "by operator: test" in last.reasons[0]
        if status["canary_status"] == "paused":  # stays so until a person resumes it
            dep = await h.run(dep_id)
            assert dep.canary_status == "paused"
            await h.act(dep_id, "resume")
        dep = await h.run(dep_id)
        assert dep.canary_status in ("completed", "rolled_back"), dep.reasons
        expected = "v1" if action == "rollback" else "v2"
        assert dep.canary_status == ("rolled_back" if expected == "v1" else "completed")
        assert set(h.fleet.versions.values()) == {expected}
        served = h.outside.memory_proxy.serving
        assert served is not None and len(served.backends) == len(h.hosts)
        if action == "rollback":
            h.restore_order_ok("v2")
