"""`canaryd serve` with CANARYD_API_WORKERS=2: two API processes behind one port, each with its own Redis
subscription; every WebSocket subscriber, on whichever process the kernel gave its connection, sees every
event in order (compared with GET /events)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from tests.fixtures.stack import LoadGenerator

from canaryd.settings import Settings

from .cluster import FAST, check_reality, cluster, wait_terminal
from .test_replicas import subscribe


def _api_workers(pid: int) -> list[int]:
    """The processes uvicorn spawned to serve (not multiprocessing's resource tracker)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and b"spawn_main" in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
    return out


def _connections_on(pid: int, port: int) -> int:
    """Established TCP connections to `port` whose socket the process holds (from /proc, no tools)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


async def test_two_api_worker_processes_stream_every_event(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    """Two API processes under one `canaryd serve`: 16 subscribers, all see the whole history, in order."""
    async with cluster(tmp_path, pg_url, redis_url, CANARYD_API_WORKERS="2") as c:
        base = await c.start_api()
        c.start_worker("worker0")
        serving = _api_workers(c.procs["api0"].pid)
        async with c.client(base) as api:
            app = await c.add_app(api, "workers")
            app.load = LoadGenerator(app.proxy_url, rate=10).start()
            r = await api.post(
                f"/applications/{app.id}/deployments",
                json={"version": "v2", "strategy": "canary", "config": FAST},
            )
            assert r.status_code == 201, r.text
            dep_id = r.json()["id"]
            streams = [asyncio.create_task(subscribe(base, dep_id)) for _ in range(16)]
            await asyncio.sleep(1)  # all connected
            port = int(base.rsplit(":", 1)[1])
            spread = {pid: _connections_on(pid, port) for pid in serving}
            final = await wait_terminal(api, [dep_id], timeout=60)
            seen = await asyncio.wait_for(asyncio.gather(*streams), timeout=10)
            await check_reality(api, app, final[dep_id], c.nginx)
            history = (await api.get(f"/deployments/{dep_id}/events")).json()
        assert len(serving) >= 2, f"expected two API worker processes, found {serving}"
        assert sum(spread.values()) >= 16, spread
        for got in seen:
            assert got, "a subscriber streamed nothing"
            tail = [e["seq"] for e in history if e["seq"] >= got[0]["seq"]]
            assert [e["seq"] for e in got] == tail
        print(f"\napi workers: connections per process {sorted(spread.values())}, {len(history)} events each")


def test_several_api_workers_need_production_mode() -> None:
    """Embedded mode keeps one process (its scheduler and bus live there): more workers are refused."""
    assert Settings(api_workers=4, redis_url="redis://127.0.0.1:6379/0").api_workers == 4
    assert Settings(redis_url=None).api_workers == 1
    with pytest.raises(ValidationError, match="needs production mode"):
        Settings(api_workers=2, redis_url=None)
