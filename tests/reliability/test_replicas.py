"""Two API replicas and three workers on one database: no deployment is advanced twice, and WebSocket
subscribers on either replica see every event (compared with GET /events)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.fixtures.stack import LoadGenerator
from websockets.asyncio.client import connect

from .cluster import FAST, TOKEN, check_reality, cluster, wait_terminal


async def subscribe(base: str, dep_id: int) -> list[dict[str, Any]]:
    """Every event the replica at `base` streams for the deployment, until it is finished."""
    url = base.replace("http", "ws") + f"/api/v1/deployments/{dep_id}/ws"
    events: list[dict[str, Any]] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "status" and first["id"] == dep_id
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "event":
                events.append(msg)
            elif msg["canary_status"] in ("completed", "rolled_back"):
                return events
    return events


async def test_two_replicas_three_workers(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """Deployments created on either replica run once each; both replicas stream every event."""
    async with cluster(tmp_path, pg_url, redis_url) as c:
        bases = [await c.start_api(), await c.start_api()]
        for i in range(3):
            c.start_worker(f"worker{i}")
        async with c.client(bases[0]) as api0, c.client(bases[1]) as api1:
            apps = [await c.add_app(api0, f"rep{i}") for i in range(4)]
            ids, streams = [], []
            for i, app in enumerate(apps):
                app.load = LoadGenerator(app.proxy_url, rate=10).start()
                api = (api0, api1)[i % 2]
                version = "v2-dead" if i == 3 else "v2"
                r = await api.post(
                    f"/applications/{app.id}/deployments",
                    json={"version": version, "strategy": "canary", "config": FAST},
                )
                assert r.status_code == 201, r.text
                dep_id = r.json()["id"]
                ids.append(dep_id)
                streams += [asyncio.create_task(subscribe(base, dep_id)) for base in bases]
            final = await wait_terminal(api1, ids, timeout=60)
            seen = await asyncio.wait_for(asyncio.gather(*streams), timeout=10)
            total = 0
            for n, (app, dep_id) in enumerate(zip(apps, ids, strict=True)):
                await check_reality(api0, app, final[dep_id], c.nginx)
                history = (await api1.get(f"/deployments/{dep_id}/events")).json()
                for replica in (0, 1):
                    got = seen[2 * n + replica]
                    assert got, f"replica {replica} streamed nothing for {dep_id}"
                    tail = history[history.index(next(e for e in history if e["seq"] == got[0]["seq"])) :]
                    assert [e["seq"] for e in got] == [e["seq"] for e in tail], (replica, dep_id)
                    assert [e["kind"] for e in got] == [e["kind"] for e in tail]
                    total += len(got)
                kinds = {e["kind"] for e in history}
                assert "stage_advanced" in kinds or final[dep_id]["canary_status"] == "rolled_back"
        print(f"\nreplicas: {len(ids)} deployments, {total} events streamed over 2 replicas, none missing")
