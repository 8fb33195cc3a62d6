"""End to end on real parts: canaryd's API on a real port, real nginx, five real app instances on loopback,
SQLite + in-process scheduler (embedded) or PostgreSQL + Redis + workers (production)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.fixtures.sshd import running_sshd
from tests.fixtures.stack import TOKEN, LoadGenerator, Stack, loopback_hosts, make_stack
from websockets.asyncio.client import connect

#: Two-second stages. Only requests slower than 1 s count as slow: these tests are about the lifecycle, and on
#: a loaded machine the tail of a few hundred requests is noise (tests/e2e/test_judge_e2e.py judges latency).
FAST = {
    "stages": [10, 25, 50, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "min_requests": 10,
    "latency_tail_ms": 1000,
}


def failures(load: LoadGenerator) -> int:
    return sum(1 for h in load.hits if h.status == 0 or h.status >= 500)


async def run_healthy_canary(s: Stack) -> None:
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    r = await s.deploy("v2", FAST)
    assert r.status_code == 201, r.text
    dep = r.json()
    await s.wait(dep["id"])
    await load.stop()
    status = await s.status(dep["id"])
    assert status["canary_status"] == "completed", status["reasons"]
    assert status["status"] == "completed" and status["current_traffic_percentage"] == 100
    assert await s.fleet_versions() == ["v2"] * 5
    events = await s.events(dep["id"])
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "deployment_created" and kinds[-1] == "completed"
    assert [e["stage"] for e in events if e["kind"] == "stage_advanced"] == [1, 2, 3, 4]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    advanced = [e for e in events if e["kind"] == "stage_advanced"]
    assert all(e["metrics"]["proxy"]["live_ms"] > 0 for e in advanced)
    assert all("canary" in e["metrics"] for e in advanced[1:]), (
        "each later stage carries the last one's snapshot"
    )
    assert failures(load) == 0


async def test_healthy_canary_completes_embedded(embedded_stack: Stack) -> None:
    """Embedded mode: a healthy canary walks every stage and ends with the new version on every server."""
    await run_healthy_canary(embedded_stack)


async def test_healthy_canary_completes_production(production_stack: Stack) -> None:
    """Production mode (PostgreSQL, Redis, two workers): the same, with no stage applied twice."""
    await run_healthy_canary(production_stack)


async def test_failing_canary_rolls_back(any_stack: Stack) -> None:
    """A canary answering 30 % errors is rolled back automatically, naming the metric; v1 is back everywhere."""
    s = any_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    # A stage of 12 s has time buckets of 2.4 s: the comparison needs ~5 buckets at its cap to roll back, so
    # this is about as short as a stage can be for the judge to decide within its first stage.
    r = await s.deploy("v3-bad", {**FAST, "stage_duration": 12})
    dep = r.json()
    timeline = await s.wait(dep["id"], timeout=60)
    await asyncio.sleep(1.5)  # traffic after the rollback must all reach v1
    await load.stop()
    status = await s.status(dep["id"])
    assert status["canary_status"] == "rolled_back"
    assert any(reason.startswith("error_rate:") for reason in status["reasons"]), status["reasons"]
    assert ("monitoring", 10.0, 1) in [t[1:] for t in timeline], timeline
    assert await s.fleet_versions() == ["v1"] * 5
    kinds = [e["kind"] for e in await s.events(dep["id"])]
    assert kinds[-3:] == ["rollback_started", "server_restored", "rolled_back"]
    after = [h for h in load.hits if h.at > timeline[-1][0] + 0.5]
    assert after and all(h.version == "v1" for h in after if h.status)


async def test_websocket_streams_status_then_events(embedded_stack: Stack) -> None:
    """The WebSocket sends the status object at once, then each event as it happens, up to completion."""
    s = embedded_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=40).start()
    dep = (await s.deploy("v2", FAST)).json()
    url = s.base.replace("http", "ws") + f"/api/v1/deployments/{dep['id']}/ws"
    received = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "status" and first["id"] == dep["id"]
        async for raw in ws:
            msg = json.loads(raw)
            received.append(msg)
            if msg["type"] == "status" and msg["canary_status"] in ("completed", "rolled_back"):
                break
    await load.stop()
    kinds = [m["kind"] for m in received if m["type"] == "event"]
    history = [e["kind"] for e in await s.events(dep["id"])]
    assert kinds == history[len(history) - len(kinds) :]
    assert "stage_advanced" in kinds and kinds[-1] in ("completed", "rolled_back")


async def test_canary_over_ssh_transport(tmp_path: Path, sqlite_url: str) -> None:
    """Servers reached over SSH (real sshd, verified host keys): deploy commands run there and the canary completes."""
    hosts = loopback_hosts(5)
    # One sshd listening on every server address, with a known_hosts entry per address.
    with running_sshd(hosts[0], extra_hosts=hosts[1:]) as sshd:
        async with make_stack(
            tmp_path,
            sqlite_url,
            hosts=hosts,
            ssh_known_hosts=sshd.known_hosts,
            ssh_client_keys=[sshd.client_key],
        ) as s:
            await s.register(
                "v1", transport={"transport": "ssh", "ssh_port": sshd.port, "ssh_user": sshd.user}
            )
            load = LoadGenerator(s.proxy_url, rate=40).start()
            dep = (await s.deploy("v2", FAST)).json()
            await s.wait(dep["id"])
            await load.stop()
            assert (await s.status(dep["id"]))["canary_status"] == "completed"
            assert await s.fleet_versions() == ["v2"] * 5
