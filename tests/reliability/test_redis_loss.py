"""Redis lost mid-rollout, for real, on a private redis-server: its queue flushed, then the server killed and
restarted empty. The reconciler re-enqueues every active deployment within about one reconcile period and
all of them finish, consistent with what the fleet and nginx serve.

Runs with CANARYD_RECONCILE_INTERVAL=1 (docs/reliability.md tells users to lower it from the default 10 s
when they want Redis losses recovered in ~3 s rather than ~23 s): two faults in one rollout stay quick."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from tests.fixtures.stack import LoadGenerator

from .cluster import FAST, check_reality, cluster, redis_server, wait_terminal

RECONCILE = 1.0


async def event_counts(api: httpx.AsyncClient, ids: list[int]) -> dict[int, int]:
    return {d: len((await api.get(f"/deployments/{d}/events")).json()) for d in ids}


async def wait_all_progress(api: httpx.AsyncClient, ids: list[int], before: dict[int, int]) -> float:
    """Seconds until every deployment has recorded a new event (a tick ran) since `before`."""
    t0 = time.monotonic()
    pending = set(ids)
    while pending:
        now = await event_counts(api, sorted(pending))
        pending = {d for d in pending if now[d] <= before[d]}
        assert time.monotonic() - t0 < 20, f"no tick for {pending} in 20 s after losing Redis"
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def test_redis_flushed_and_restarted_mid_rollout(tmp_path: Path, pg_url: str) -> None:
    """FLUSHDB, then SIGKILL + restart of Redis mid-rollout: every deployment is re-enqueued and finishes."""
    config = {**FAST, "stages": [20, 50, 100], "stage_duration": 3}
    with redis_server() as redis:
        async with cluster(tmp_path, pg_url, redis.url, CANARYD_RECONCILE_INTERVAL=str(RECONCILE)) as c:
            await c.start_api()
            c.start_worker("worker0")
            c.start_worker("worker1")
            async with c.client() as api:
                apps = [await c.add_app(api, f"redis{i}") for i in range(3)]
                ids = []
                for app in apps:
                    app.load = LoadGenerator(app.proxy_url, rate=10).start()
                    r = await api.post(
                        f"/applications/{app.id}/deployments",
                        json={"version": "v2", "strategy": "canary", "config": config},
                    )
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["id"])
                # Wait until every rollout is monitoring, with ticks deferred in the queue.
                deadline = time.monotonic() + 30
                while {(await api.get(f"/deployments/{d}")).json()["canary_status"] for d in ids} != {
                    "monitoring"
                }:
                    assert time.monotonic() < deadline, "rollouts did not reach monitoring"
                    await asyncio.sleep(0.1)
                assert int(redis.cli("DBSIZE")) > 0, "nothing was queued: the test would prove nothing"
                queued = int(redis.cli("DBSIZE"))
                before = await event_counts(api, ids)
                assert redis.cli("FLUSHDB") == "OK"
                after_flush = await wait_all_progress(api, ids, before)

                redis.kill()
                await asyncio.sleep(1.0)
                redis.start()
                before = await event_counts(api, ids)
                after_restart = await wait_all_progress(api, ids, before)

                final = await wait_terminal(api, ids, timeout=60)
                outcomes = [
                    await check_reality(api, app, final[d], c.nginx) for app, d in zip(apps, ids, strict=True)
                ]
            print(
                f"\nredis loss: {queued} keys flushed; every deployment ticked again {after_flush:.1f} s after "
                f"FLUSHDB and {after_restart:.1f} s after the restart; outcomes {outcomes}"
            )
            # A tick is due within health_check_interval (1 s); the reconciler re-enqueues it once it is
            # RECONCILE s overdue and looks every RECONCILE s: 3 s, plus the tick itself.
            assert after_flush < 1 + 2 * RECONCILE + 2.5
            assert after_restart < 1 + 2 * RECONCILE + 2.5
            assert outcomes == ["v2"] * 3, [final[d]["reasons"] for d in ids]
            # Ticks in flight when Redis went away finished on a live runtime (not one closed under them).
            assert "has been closed" not in c.logs() and "tick of deployment" not in c.logs(), c.logs()[
                -3000:
            ]
            for name in ("worker0", "worker1"):
                assert c.procs[name].poll() is None, f"{name} died with Redis: {c.log(name)}"
