"""Random sequences of ticks, time, operator actions (an approval gate included), canary behaviour, proxy outages and crashes, checked
after every step: no illegal transition, no stage skipped, every server change recorded once, a rollback's
traffic cut before any server is restored; and at the end every rollout finishes consistent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from canaryd.services.errors import Conflict

from .harness import Harness, harness
from .world import Behaviour, Crash

ACTIONS = st.sampled_from(["pause", "resume", "promote", "next", "rollback"])


class Rollout(RuleBasedStateMachine):
    """One deployment driven by hypothesis."""

    new_db: Callable[[], str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.context: contextlib.AbstractAsyncContextManager[Harness] = harness(
            self.new_db(), servers=3, max_retry_backoff=4.0
        )
        self.h = self.run(self.context.__aenter__())
        self.dep_id = self.run(
            self.h.deploy("v2", stages=[25, 50, 100], stage_duration=30, approve_before=[50])
        )

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _step(self) -> None:
        with contextlib.suppress(Crash):
            await self.h.step()

    @rule()
    def tick(self) -> None:
        self.run(self._step())

    @rule(seconds=st.integers(min_value=1, max_value=90))
    def time_passes(self, seconds: int) -> None:
        self.h.clock.advance(seconds)

    @rule(action=ACTIONS, reason=st.sampled_from([None, "pager"]))
    def operator(self, action: str, reason: str | None) -> None:
        name, to = ("promote", "next") if action == "next" else (action, "full")
        with contextlib.suppress(Conflict):
            self.run(self.h.act(self.dep_id, name, to, reason))

    @rule(error_rate=st.sampled_from([0.0, 0.0, 0.4]), healthy=st.booleans())
    def canary_behaves(self, error_rate: float, healthy: bool) -> None:
        self.h.fleet.behaviours["v2"] = Behaviour(error_rate=error_rate, healthy=healthy)

    @rule(down=st.booleans())
    def proxy(self, down: bool) -> None:
        self.h.fleet.proxy_down = down

    @rule(after=st.integers(min_value=1, max_value=4))
    def crash_soon(self, after: int) -> None:
        """The process dies at the `after`-th effect or write from now."""
        left = [after]

        def hook(point: str) -> None:
            left[0] -= 1
            if left[0] == 0:
                self.h.fleet.before_effect = lambda _: None
                raise Crash(point)

        self.h.fleet.before_effect = hook

    @invariant()
    def consistent(self) -> None:
        self.run(self.h.check_invariants(self.dep_id))
        self.h.restore_order_ok("v2")

    def teardown(self) -> None:
        try:
            self.run(self._finish())
        finally:
            self.run(self.context.__aexit__(None, None, None))
            self.loop.close()

    async def _finish(self) -> None:
        """Heals the world, resumes what is paused, and runs the rollout to its end."""
        h = self.h
        h.fleet.proxy_down, h.fleet.before_effect = False, lambda _: None
        for _ in range(20):
            dep = await h.run(self.dep_id, max_ticks=400)
            if dep.canary_status in ("completed", "rolled_back"):
                break
            if dep.canary_status in ("paused", "waiting_for_approval"):
                await h.act(self.dep_id, "resume")
        assert dep.canary_status in ("completed", "rolled_back"), (dep.canary_status, dep.reasons)
        wanted = "v2" if dep.canary_status == "completed" else "v1"
        assert set(h.fleet.versions.values()) == {wanted}, h.fleet.versions
        served = h.outside.memory_proxy.serving
        assert served is not None and len(served.backends) == len(h.hosts)
        await h.check_invariants(self.dep_id)


def test_random_rollouts(new_db: Callable[[], str]) -> None:
    """Hypothesis drives random rollouts (20 sequences of up to 25 steps)."""
    Rollout.new_db = staticmethod(new_db)  # type: ignore[assignment]
    run_state_machine_as_test(
        Rollout,
        settings=settings(
            max_examples=20,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            derandomize=True,
        ),
    )
