"""PATCH and DELETE /api/v1/applications/{id} through the real API, nginx and sample apps."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import httpx
from tests.fixtures.stack import APPCTL, Stack

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


async def test_server_host_change_repoints_every_proxy_or_none(embedded_stack: Stack) -> None:
    """A new host for a server two applications use: when one proxy refuses it, both proxies are back at
    their previous configuration and nothing is recorded (422); once it is accepted, both proxies route to
    the new address and clients reach the instance listening there."""
    s = embedded_stack
    app = await s.register("v1")
    old_host, server_id = s.hosts[0], s.server_ids[0]
    new_host = old_host.rsplit(".", 1)[0] + ".40"
    s.hosts.append(new_host)  # the fixture stops it afterwards
    await s.appctl("start", new_host, "v1-moved")
    flag = s.state_dir / "refuse"
    second = f"{Path(s.nginx.config_path).parent}/shop2.conf"
    proxy = copy.deepcopy(app["proxy"])
    proxy |= {
        "config_path": second,
        "listen": None,
        "test_command": f"test ! -e {flag} && {s.nginx.test_command}",
    }
    body = {
        "name": "shop2",
        "port": s.app_port,
        "server_ids": s.server_ids[:2],
        "current_version": "v1",
        "deploy_command": f"{sys.executable} {APPCTL} start --host {{host}} --port {{port}} --version {{version}}",
        "proxy": proxy,
    }
    r = await s.api.post("/applications", json=body)
    assert r.status_code == 201, r.text
    before = {p: Path(p).read_bytes() for p in (s.nginx.config_path, second)}
    apps_before = (await s.api.get("/applications")).json()

    flag.touch()  # shop2's proxy now refuses any configuration: shop's change must be undone
    r = await s.api.patch(f"/servers/{server_id}", json={"host": new_host})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "host"] and "'shop2'" in r.text, r.text
    assert (await s.api.get(f"/servers/{server_id}")).json()["host"] == old_host
    assert {p: Path(p).read_bytes() for p in before} == before, "every proxy is back where it was"
    assert (await s.api.get("/applications")).json() == apps_before, "nothing recorded"
    seen, codes = await versions_and_status(s.proxy_url, 20)
    assert seen == {"v1"} and codes == {200}

    flag.unlink()
    r = await s.api.patch(f"/servers/{server_id}", json={"host": new_host, "labels": {"moved": "yes"}})
    assert r.status_code == 200, r.text
    assert r.json()["host"] == new_host and r.json()["labels"] == {"moved": "yes"}
    for path in before:
        conf = Path(path).read_text()
        assert f"{new_host}:{s.app_port}" in conf and f"{old_host}:" not in conf, conf
    after = {a["name"]: a["proxy_generation"] for a in (await s.api.get("/applications")).json()}
    assert after == {a["name"]: a["proxy_generation"] + 1 for a in apps_before}
    await s.appctl("stop", old_host)
    seen, codes = await versions_and_status(s.proxy_url, 60)
    assert "v1-moved" in seen and codes == {200}, (seen, codes)
