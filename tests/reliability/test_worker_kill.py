"""Workers SIGKILLed at random moments (mostly while they hold a tick's lease) across many real rollouts in
production mode, and restarted, with the SHIPPED lease and reconcile settings (15 s and 10 s): every
deployment still ends, in the state the fleet and nginx really show, with a history that has no gaps and
applies no stage twice; and each deployment a killed worker held is carried on by another worker within
lease + reconcile interval (25 s; 30 s allowed for the tick itself on a loaded machine)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from tests.fixtures.stack import LoadGenerator

from .cluster import FAST, Cluster, check_reality, cluster, wait_terminal

WORKERS = ["worker0", "worker1", "worker2"]
ROLLOUTS = 10
#: Faults injected per run; bounded so that a slow machine does not turn the test into a livelock.
MAX_KILLS = 6
#: Faults a run must have injected to count.
MIN_KILLS, MIN_MID_TICK = 4, 2
#: What a user gets with the defaults: lease 15 s + reconcile 10 s, plus the tick itself.
RECOVERY_LIMIT_SECONDS = 30.0


@dataclass
class Chaos:
    kills: int = 0
    mid_tick: int = 0  # kills of a worker that held a live lease at that moment
    #: (deployment id, monotonic time of the kill) for every lease a killed worker held.
    held: list[tuple[int, float]] = field(default_factory=list)
    recovery: list[float] = field(default_factory=list)


def pid_of(lease_owner: str) -> int:
    """Lease ids are `role:host:pid:random`."""
    return int(lease_owner.rsplit(":", 2)[1])


async def chaos(c: Cluster, dsn: str, stats: Chaos) -> None:
    """Up to MAX_KILLS times, every 2-5 s, SIGKILL a worker (one that holds a lease, when there is one),
    restart it shortly after; remember which deployments it held. While fewer than MIN_MID_TICK kills hit a
    tick, it waits up to 10 s for a worker that holds a lease and kills it (ticks are short, and between rounds none runs)."""
    conn = await asyncpg.connect(dsn)
    try:
        while stats.kills < MAX_KILLS:
            await asyncio.sleep(random.uniform(2.0, 5.0))
            # Batched ticks hold a lease for milliseconds: look longer and closer for a worker inside one.
            needs_mid_tick = stats.mid_tick < MIN_MID_TICK
            look_until = time.monotonic() + (10.0 if needs_mid_tick else 0.0)
            while True:
                rows = await conn.fetch(
                    "SELECT id, lease_owner FROM deployments WHERE lease_until > now() AT TIME ZONE 'utc'"
                    " AND lease_owner IS NOT NULL"
                )
                pids = {c.procs[w].pid: w for w in WORKERS}
                busy = {
                    pids[pid_of(r["lease_owner"])]: r["id"] for r in rows if pid_of(r["lease_owner"]) in pids
                }
                if busy or time.monotonic() >= look_until:
                    break
                await asyncio.sleep(0.02)
            prefer_busy = needs_mid_tick or random.random() < 0.8
            name = random.choice(list(busy)) if busy and prefer_busy else random.choice(WORKERS)
            held = [r["id"] for r in rows if pids.get(pid_of(r["lease_owner"])) == name]
            c.kill(name)
            now = time.monotonic()
            stats.kills += 1
            stats.mid_tick += bool(held)
            stats.held += [(dep_id, now) for dep_id in held]
            await asyncio.sleep(random.uniform(0.0, 0.5))
            c.start_worker(name)
    finally:
        await conn.close()


async def watch_recovery(dsn: str, stats: Chaos) -> None:
    """For each deployment a killed worker held: the time until another tick committed on it."""
    conn = await asyncpg.connect(dsn)
    seen = 0
    pending: dict[int, tuple[float, object]] = {}
    try:
        while True:
            for dep_id, at in stats.held[seen:]:
                row = await conn.fetchrow("SELECT updated_at FROM deployments WHERE id = $1", dep_id)
                pending[dep_id] = (at, row["updated_at"])
            seen = len(stats.held)
            for dep_id, (at, before) in list(pending.items()):
                row = await conn.fetchrow(
                    "SELECT updated_at, active_application_id FROM deployments WHERE id = $1", dep_id
                )
                if row["updated_at"] != before or row["active_application_id"] is None:
                    stats.recovery.append(time.monotonic() - at)
                    del pending[dep_id]
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_workers_killed_at_random_points(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """10 concurrent rollouts under 3 workers that keep being SIGKILLed: all finish, consistent with reality."""
    async with cluster(tmp_path, pg_url, redis_url) as c:
        await c.start_api()
        for name in WORKERS:
            c.start_worker(name)
        stats = Chaos()
        async with c.client() as api:
            apps = [await c.add_app(api, f"kill{i}") for i in range(ROLLOUTS)]
            for app in apps:
                app.load = LoadGenerator(app.proxy_url, rate=8).start()
            dsn = pg_url.replace("+asyncpg", "")
            task = asyncio.create_task(chaos(c, dsn, stats))
            watcher = asyncio.create_task(watch_recovery(dsn, stats))
            outcomes: list[tuple[str, str]] = []
            rounds = 0
            try:
                # Rounds of rollouts until enough faults were injected (a fast machine finishes a round sooner).
                for round_, version in enumerate(["v2", "v3", "v4"]):
                    if stats.kills >= MIN_KILLS and stats.mid_tick >= MIN_MID_TICK:
                        break
                    rounds += 1
                    ids = []
                    for i, app in enumerate(apps):
                        # Every third rollout deploys a version whose health check fails: a rollback.
                        v = f"{version}-dead" if (i + round_) % 3 == 1 else version
                        r = await api.post(
                            f"/applications/{app.id}/deployments",
                            json={"version": v, "strategy": "canary", "config": FAST},
                        )
                        assert r.status_code == 201, r.text
                        ids.append(r.json()["id"])
                    final = await wait_terminal(api, ids, timeout=240)
                    for app, dep_id in zip(apps, ids, strict=True):
                        runs = await check_reality(api, app, final[dep_id], c.nginx)
                        outcomes.append((final[dep_id]["canary_status"], runs))
                        if (
                            final[dep_id]["canary_status"] == "rolled_back"
                            and "dead" not in final[dep_id]["version"]
                        ):
                            print(
                                f"\nhealthy {final[dep_id]['version']} rolled back: {final[dep_id]['reasons']}"
                            )
            finally:
                for t in (task, watcher):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
        times = sorted(stats.recovery)
        print(
            f"\nworker kill with the default lease and reconcile interval: {stats.kills} kills, "
            f"{stats.mid_tick} mid-tick; recovery of {len(times)} held deployments: "
            f"p50 {statistics.median(times) if times else 0:.1f} s, max {max(times, default=0):.1f} s; "
            f"outcomes {outcomes}"
        )
        assert times and max(times) <= RECOVERY_LIMIT_SECONDS, times
        assert len(outcomes) == ROLLOUTS * rounds
        assert {o for o, _ in outcomes} == {"completed", "rolled_back"}
        assert [o for o, v in outcomes if "dead" in v] == [], "a dead version ended up serving"
        assert stats.kills >= MIN_KILLS and stats.mid_tick >= MIN_MID_TICK, stats
