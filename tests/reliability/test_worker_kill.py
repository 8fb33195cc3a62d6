"""Workers SIGKILLed at random moments (mostly while they hold a tick's lease) across many real rollouts in
production mode, and restarted: every deployment still ends, in the state the fleet and nginx really show,
with a history that has no gaps and applies no stage twice."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from tests.fixtures.stack import LoadGenerator

from .cluster import FAST, Cluster, check_reality, cluster, wait_terminal

WORKERS = ["worker0", "worker1", "worker2"]
ROLLOUTS = 10
#: Faults injected per run; bounded so that a slow machine does not turn the test into a livelock.
MAX_KILLS = 15
#: Faults a run must have injected to count.
MIN_KILLS, MIN_MID_TICK = 8, 2


@dataclass
class Chaos:
    kills: int = 0
    mid_tick: int = 0  # kills of a worker that held a live lease at that moment


async def chaos(c: Cluster, dsn: str, stats: Chaos) -> None:
    """Up to MAX_KILLS times, every 0.8-2.5 s, SIGKILL a worker (one that holds a lease, when there is one), restart it shortly after."""
    conn = await asyncpg.connect(dsn)
    try:
        while stats.kills < MAX_KILLS:
            await asyncio.sleep(random.uniform(0.8, 2.5))
            owners = [
                r["lease_owner"]
                for r in await conn.fetch(
                    "SELECT lease_owner FROM deployments WHERE lease_until > now() AT TIME ZONE 'utc'"
                    " AND lease_owner IS NOT NULL"
                )
            ]
            pids = {c.procs[w].pid: w for w in WORKERS}
            busy = [pids[int(o.rsplit(":", 1)[1])] for o in owners if int(o.rsplit(":", 1)[1]) in pids]
            name = random.choice(busy) if busy and random.random() < 0.7 else random.choice(WORKERS)
            c.kill(name)
            stats.kills += 1
            stats.mid_tick += name in busy
            await asyncio.sleep(random.uniform(0.0, 0.5))
            c.start_worker(name)
    finally:
        await conn.close()


async def test_workers_killed_at_random_points(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """10 concurrent rollouts under 3 workers that keep being SIGKILLed: all finish, consistent with reality."""
    async with cluster(tmp_path, pg_url, redis_url, CANARYD_LEASE_SECONDS="2") as c:
        await c.start_api()
        for name in WORKERS:
            c.start_worker(name)
        stats = Chaos()
        async with c.client() as api:
            apps = [await c.add_app(api, f"kill{i}") for i in range(ROLLOUTS)]
            for app in apps:
                app.load = LoadGenerator(app.proxy_url, rate=8).start()
            task = asyncio.create_task(chaos(c, pg_url.replace("+asyncpg", ""), stats))
            outcomes: list[tuple[str, str]] = []
            try:
                # Rounds of rollouts until enough faults were injected (a fast machine finishes a round sooner).
                for round_, version in enumerate(["v2", "v3", "v4"]):
                    if stats.kills >= MIN_KILLS and stats.mid_tick >= MIN_MID_TICK:
                        break
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
                    final = await wait_terminal(api, ids, timeout=120)
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
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        print(f"\nworker kill: {stats}, outcomes {outcomes}")
        assert len(outcomes) == ROLLOUTS
        assert {o for o, _ in outcomes} == {"completed", "rolled_back"}
        assert [o for o, v in outcomes if "dead" in v] == [], "a dead version ended up serving"
        assert stats.kills >= MIN_KILLS and stats.mid_tick >= MIN_MID_TICK, stats
