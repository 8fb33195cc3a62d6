"""PostgreSQL stopped and started again mid-rollout, for real, on a private cluster: meanwhile the API answers
503 with a clear message (never 500); afterwards nothing is lost and every rollout finishes."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

from tests.fixtures.stack import LoadGenerator

from .cluster import FAST, check_reality, cluster, postgres_cluster, wait_terminal


async def test_postgres_restarted_mid_rollout(tmp_path: Path, redis_url: str) -> None:
    """While PostgreSQL is down reads and actions get 503 + Retry-After; after it is back all rollouts finish."""
    config = {**FAST, "stages": [20, 50, 100], "stage_duration": 3}
    with postgres_cluster() as pg:
        async with cluster(tmp_path, pg.url, redis_url) as c:
            await c.start_api()
            c.start_worker("worker0")
            c.start_worker("worker1")
            async with c.client() as api:
                apps = [await c.add_app(api, f"pg{i}") for i in range(2)]
                ids = []
                for app in apps:
                    app.load = LoadGenerator(app.proxy_url, rate=10).start()
                    r = await api.post(
                        f"/applications/{app.id}/deployments",
                        json={"version": "v2", "strategy": "canary", "config": config},
                    )
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["id"])
                deadline = time.monotonic() + 30
                while {(await api.get(f"/deployments/{d}")).json()["canary_status"] for d in ids} != {
                    "monitoring"
                }:
                    assert time.monotonic() < deadline, "rollouts did not reach monitoring"
                    await asyncio.sleep(0.1)
                before = {d: (await api.get(f"/deployments/{d}/events")).json() for d in ids}

                pg.stop()
                down_at = time.monotonic()
                answers = []
                for _ in range(3):
                    for call in (
                        api.get(f"/deployments/{ids[0]}"),
                        api.get(f"/deployments/{ids[0]}/events"),
                        api.post(f"/deployments/{ids[1]}/pause"),
                        api.post(f"/applications/{apps[0].id}/deployments", json={"version": "v9"}),
                    ):
                        r = await call
                        answers.append(
                            (r.status_code, r.json().get("detail") if r.status_code >= 500 else "")
                        )
                    await asyncio.sleep(0.5)
                pg.start()
                downtime, back_at = time.monotonic() - down_at, time.time()

                final = await wait_terminal(api, ids, timeout=60)
                outcomes = [
                    await check_reality(api, app, final[d], c.nginx) for app, d in zip(apps, ids, strict=True)
                ]
                resumed = []
                for d in ids:
                    after = (await api.get(f"/deployments/{d}/events")).json()
                    assert after[: len(before[d])] == before[d], "history written before the restart changed"
                    written = [datetime.fromisoformat(e["at"]).timestamp() for e in after[len(before[d]) :]]
                    resumed.append(round(min(t for t in written if t >= back_at) - back_at, 1))
            print(
                f"\npostgres restart: down {downtime:.1f} s, answers {sorted({a[0] for a in answers})}, outcomes {outcomes}, "
                f"first event after the restart {resumed} s"
            )
            assert {code for code, _ in answers} == {503}, answers
            assert all("database is unavailable" in detail for _, detail in answers)
            assert outcomes == ["v2", "v2"], [final[d]["reasons"] for d in ids]
            # Ticks the database refused run again every 2 s (DATABASE_RETRY_SECONDS), not after the
            # reconciler's lease + interval (25 s): a generous bound that only the old way breaks.
            assert max(resumed) < 10, resumed
            assert "Traceback" not in c.log("api0"), c.log("api0")
