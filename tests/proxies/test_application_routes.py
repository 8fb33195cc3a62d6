"""PATCH and DELETE /api/v1/applications/{id} through the real API, nginx and sample apps."""

from __future__ import annotations

from pathlib import Path

import httpx
from tests.fixtures.stack import Stack

SLOW = {"stages": [10, 100], "stage_duration": 60, "health_check_interval": 1, "min_requests": 10}


async def versions_and_status(url: str, n: int) -> tuple[set[str], set[int]]:
    seen, codes = set(), set()
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(n):
            try:
                r = await client.get(url, headers={"Connection": "close"})
            except httpx.ConnectError:
                codes.add(0)
                continue
            codes.add(r.status_code)
            seen.add(r.headers.get("x-version", ""))
    return seen, codes


async def test_change_and_delete_wait_for_the_deployment_and_take_effect(embedded_stack: Stack) -> None:
    """409 while a deployment is active; then PATCH drops a server from the proxy (proven before it counts),
    and DELETE takes the application out of nginx and the database (204, then nothing listens)."""
    s = embedded_stack
    app = await s.register("v1")
    app_id = app["id"]
    r = await s.deploy("v2", SLOW)
    assert r.status_code == 201, r.text
    dep = r.json()["id"]
    await s.wait(dep, until={"monitoring"}, timeout=30)
    assert (
        await s.api.patch(f"/applications/{app_id}", json={"server_ids": s.server_ids[:2]})
    ).status_code == 409
    assert (await s.api.delete(f"/applications/{app_id}")).status_code == 409
    assert (await s.api.post(f"/deployments/{dep}/rollback")).status_code == 202
    await s.wait(dep, timeout=60)

    bad = await s.api.patch(f"/applications/{app_id}", json={"server_ids": [99999], "port": 0})
    assert bad.status_code == 422, bad.text
    r = await s.api.patch(f"/applications/{app_id}", json={"server_ids": s.server_ids[:2], "name": "shop-2"})
    assert r.status_code == 200, r.text
    assert r.json()["server_ids"] == s.server_ids[:2] and r.json()["name"] == "shop-2"
    assert r.json()["proxy_generation"] > app["proxy_generation"]
    conf = Path(s.nginx.config_path).read_text()
    assert all(host not in conf for host in s.hosts[2:]) and all(host in conf for host in s.hosts[:2])
    seen, codes = await versions_and_status(s.proxy_url, 20)
    assert seen == {"v1"} and codes == {200}

    r = await s.api.delete(f"/applications/{app_id}")
    assert r.status_code == 204, r.text
    assert (await s.api.get(f"/applications/{app_id}")).status_code == 404
    assert (await s.api.get(f"/applications/{app_id}/deployments")).json() == []
    _, codes = await versions_and_status(s.proxy_url, 3)
    assert codes == {0}  # nginx no longer listens for it
    assert (await s.api.delete(f"/applications/{app_id}")).status_code == 404
