"""A crash (the process killed, nothing after that point runs) before any effect or write of a rollout,
followed by a fresh tick once the reconciler finds the deployment: every rollout still ends consistent,
with every server change recorded once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .harness import Harness, harness
from .world import Behaviour, Crash

SHORT = {"stages": [50, 100], "stage_duration": 20}


def crash_at(h: Harness, k: int) -> list[str]:
    """Makes the k-th effect or write (counting from 1) crash; returns the log of points passed."""
    seen: list[str] = []

    def hook(point: str) -> None:
        seen.append(point)
        if len(seen) == k:
            raise Crash(point)

    h.fleet.before_effect = hook
    return seen


async def run_through_crash(h: Harness, dep_id: int) -> bool:
    """Runs to the end; True if the crash happened on the way."""
    crashed = False
    for _ in range(300):
        try:
            dep = await h.run(dep_id)
        except Crash:
            crashed = True
            continue
        if dep.canary_status in ("completed", "rolled_back"):
            return crashed
    raise AssertionError("the rollout did not end")


async def count_points(db_url: str, behaviours: dict[str, Behaviour]) -> int:
    async with harness(db_url, servers=3, behaviours=behaviours) as h:
        seen = crash_at(h, 10**9)
        await h.run(await h.deploy("v2", **SHORT))
        return len(seen)


@pytest.mark.parametrize(
    ("name", "behaviours", "ends", "version"),
    [
        ("healthy", {}, "completed", "v2"),
        ("bad", {"v2": Behaviour(error_rate=0.3)}, "rolled_back", "v1"),
    ],
)
async def test_crash_at_every_point(
    new_db: Callable[[], str], name: str, behaviours: dict[str, Behaviour], ends: str, version: str
) -> None:
    """For each point k of the rollout, a crash there, then recovery through the reconciler."""
    points = await count_points(new_db(), behaviours)
    assert points >= 8, points
    for k in range(1, points + 1):
        async with harness(new_db(), servers=3, behaviours=behaviours) as h:
            seen = crash_at(h, k)
            dep_id = await h.deploy("v2", **SHORT)
            assert await run_through_crash(h, dep_id), f"no crash at point {k}"
            dep = await h.status(dep_id)
            assert dep.canary_status == ends, (k, seen[-1], dep.reasons)
            assert set(h.fleet.versions.values()) == {version}, (k, seen[-1], h.fleet.versions)
            await h.check_invariants(dep_id)
            if ends == "rolled_back":
                h.restore_order_ok("v2")
