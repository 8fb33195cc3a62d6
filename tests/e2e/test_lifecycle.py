"""End to end on real parts: canaryd's API on a real port, real nginx, five real app instances on loopback."""

from __future__ import annotations

from tests.fixtures.stack import LoadGenerator, Stack

FAST = {"stages": [10, 25, 50, 100], "stage_duration": 2, "health_check_interval": 1, "min_requests": 10}


async def test_healthy_canary_completes_embedded(embedded_stack: Stack) -> None:
    """A healthy canary walks every stage and ends with the new version on every server."""
    s = embedded_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    r = await s.deploy("v2", FAST)
    assert r.status_code == 201, r.text
    dep = r.json()
    await s.wait(dep["id"])
    await load.stop()
    status = await s.status(dep["id"])
    assert status["canary_status"] == "completed", status["reasons"]
    assert await s.fleet_versions() == ["v2"] * 5
    kinds = [e["kind"] for e in await s.events(dep["id"])]
    assert kinds[0] == "deployment_created" and kinds[-1] == "completed"
    assert kinds.count("stage_advanced") == 4
    assert sum(1 for h in load.hits if h.status == 0 or h.status >= 500) == 0
