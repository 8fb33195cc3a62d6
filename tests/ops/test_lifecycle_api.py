"""Servers updated and deleted (with their 409s), tokens listed, revoked and expiring, deployments listed
with filters and cursor pages: through the real API on real parts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from canaryd.settings import Settings
from tests.fixtures.stack import TOKEN, Stack, running_canaryd

SLOW = {"stages": [10, 100], "stage_duration": 600, "health_check_interval": 1, "min_requests": 10}


async def test_server_update_and_delete_with_conflicts(embedded_stack: Stack) -> None:
    s = embedded_stack
    app = await s.register("v1")
    used = s.server_ids[0]
    r = await s.api.patch(f"/servers/{used}", json={"name": "web-renamed", "labels": {"rack": "b2"}})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "web-renamed" and r.json()["labels"] == {"rack": "b2"}
    r = await s.api.delete(f"/servers/{used}")
    assert r.status_code == 409 and "shop" in r.json()["detail"], r.text

    dep = (await s.deploy("v2", SLOW)).json()
    await s.wait(dep["id"], until={"monitoring"})
    r = await s.api.patch(f"/servers/{used}", json={"labels": {}})
    assert r.status_code == 409 and f"deployment {dep['id']}" in r.json()["detail"], r.text
    r = await s.api.patch(f"/servers/{used}", json={"host": "127.0.0.99"})
    assert r.status_code == 409 and f"deployment {dep['id']}" in r.json()["detail"], r.text
    assert (await s.api.get(f"/servers/{used}")).json()["host"] == s.hosts[0]
    r = await s.api.post(f"/deployments/{dep['id']}/rollback")
    assert r.status_code == 202
    await s.wait(dep["id"])
    r = await s.api.patch(f"/servers/{used}", json={"labels": {}})
    assert r.status_code == 200, r.text

    r = await s.api.post("/servers", json={"name": "spare", "host": "10.1.2.3", "transport": "local"})
    spare = r.json()["id"]
    r = await s.api.patch(f"/servers/{spare}", json={"ssh_port": 0, "name": "bad name!", "id": 9})
    assert r.status_code == 422
    fields = {tuple(p["loc"]) for p in r.json()["detail"]}
    assert fields == {("body", "id"), ("body", "ssh_port"), ("body", "name")}, "every problem at once"
    r = await s.api.patch(f"/servers/{spare}", json={"ssh_port": 0, "name": "bad name!"})
    assert r.status_code == 422
    assert {tuple(p["loc"]) for p in r.json()["detail"]} == {("body", "ssh_port"), ("body", "name")}
    r = await s.api.patch(f"/servers/{spare}", json={"name": "web-renamed"})
    assert r.status_code == 409
    assert (await s.api.get(f"/servers/{spare}")).json()["name"] == "spare", "nothing half-applied"
    assert (await s.api.delete(f"/servers/{spare}")).status_code == 204
    assert (await s.api.get(f"/servers/{spare}")).status_code == 404
    assert (await s.api.delete(f"/servers/{spare}")).status_code == 404
    assert app["id"]


async def test_deployments_filtered_and_paged_by_cursor(embedded_stack: Stack) -> None:
    s = embedded_stack
    await s.register("v1")
    ids = []
    for version in ("v2", "v3", "v4"):
        dep = (await s.deploy(version, SLOW)).json()
        ids.append(dep["id"])
        await s.wait(dep["id"], until={"monitoring"})
        if version != "v4":
            assert (await s.api.post(f"/deployments/{dep['id']}/rollback")).status_code == 202
            await s.wait(dep["id"])
    r = await s.api.get("/deployments", params={"status": "rolled_back", "limit": 1})
    assert r.status_code == 200
    assert [d["id"] for d in r.json()] == [ids[1]]
    cursor = r.headers["X-Next-Cursor"]
    r = await s.api.get("/deployments", params={"status": "rolled_back", "limit": 1, "cursor": cursor})
    assert [d["id"] for d in r.json()] == [ids[0]] and "X-Next-Cursor" not in r.headers
    r = await s.api.get("/deployments", params={"application_id": s.app["id"], "status": "monitoring"})
    assert [d["id"] for d in r.json()] == [ids[2]]
    assert (await s.api.get("/deployments", params={"application_id": 999})).json() == []
    r = await s.api.get("/deployments", params={"status": "sleeping", "cursor": "x"})
    assert r.status_code == 422
    r = await s.api.get("/deployments", params={"cursor": "abc"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
    await s.api.post(f"/deployments/{ids[2]}/rollback")
    await s.wait(ids[2])


async def test_tokens_listed_revoked_on_every_replica_and_expiring(pg_url: str) -> None:
    settings = Settings(database_url=pg_url, bootstrap_token=TOKEN)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        running_canaryd(settings) as one,
        running_canaryd(settings) as two,
        httpx.AsyncClient(timeout=10) as http,
    ):
        r = await http.post(f"{one}/api/v1/tokens", json={"name": "ci", "scope": "deploy"}, headers=admin)
        assert r.status_code == 201, r.text
        created = r.json()
        secret, token_id = created["token"], created["id"]
        assert created["expires_at"] is None
        r = await http.post(
            f"{one}/api/v1/tokens", json={"name": "short", "scope": "read", "expires_in": 4}, headers=admin
        )
        short, short_expiry = r.json()["token"], time.monotonic() + 4
        listed = (await http.get(f"{two}/api/v1/tokens", headers=admin)).json()
        assert [t["name"] for t in listed] == ["ci", "short"]
        text = str(listed)
        assert secret not in text and "hash" not in text and short not in text
        mine = {"Authorization": f"Bearer {secret}"}
        for base in (one, two):
            assert (await http.get(f"{base}/api/v1/deployments", headers=mine)).status_code == 200
        assert (await http.get(f"{two}/api/v1/tokens", headers=mine)).status_code == 403

        r = await http.delete(f"{one}/api/v1/tokens/{token_id}", headers=admin)
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        # The replica that revoked it refuses it at once; the other may believe what it looked up a moment
        # ago for token_cache_seconds (2 s by default), and no longer.
        assert (await http.get(f"{one}/api/v1/deployments", headers=mine)).status_code == 401
        await asyncio.sleep(settings.token_cache_seconds)
        assert (await http.get(f"{two}/api/v1/deployments", headers=mine)).status_code == 401
        assert (await http.delete(f"{two}/api/v1/tokens/{token_id}", headers=admin)).status_code == 409
        listed = (await http.get(f"{two}/api/v1/tokens", headers=admin)).json()
        assert [t["name"] for t in listed] == ["short"]
        every = (await http.get(f"{two}/api/v1/tokens?include_revoked=true", headers=admin)).json()
        assert [t["active"] for t in every] == [False, True]

        await asyncio.sleep(short_expiry + 0.2 - time.monotonic())
        r = await http.get(f"{two}/api/v1/deployments", headers={"Authorization": f"Bearer {short}"})
        assert r.status_code == 401
        r = await http.post(
            f"{one}/api/v1/tokens", json={"name": "x", "scope": "read", "expires_in": 0}, headers=admin
        )
        assert r.status_code == 422


def test_nothing_from_the_working_directory(tmp_path: Path) -> None:
    """The default database is in the data directory, never ./canaryd.db."""
    settings = Settings(data_dir=tmp_path / "d")
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/d/canaryd.db"
    assert settings.sqlite_path == tmp_path / "d" / "canaryd.db"
