"""/api/v1/webhooks on a running canaryd (embedded mode): admin scope, 422s that list every problem, and a
secret that never comes back out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.fixtures.stack import TOKEN, running_canaryd

from canaryd.settings import Settings

SECRET = "never-show-me-0123456789abcdef"
GOOD = {
    "url": "https://hooks.example.com/canaryd",
    "events": ["stage_advanced", "completed"],
    "secret": SECRET,
}


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=sqlite_url, redis_url=None, bootstrap_token=TOKEN)
    async with (
        running_canaryd(settings) as base,
        httpx.AsyncClient(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client,
    ):
        yield client


async def token(api: httpx.AsyncClient, scope: str) -> dict[str, str]:
    r = await api.post("/tokens", json={"name": f"t-{scope}", "scope": scope})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def test_subscribe_list_get_delete(api: httpx.AsyncClient) -> None:
    """An admin subscribes, sees the subscription (secret_set, never the secret), and deletes it."""
    r = await api.post("/webhooks", json={**GOOD, "format": "slack", "description": "oncall"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret_set"] is True and created["format"] == "slack"
    assert created["events"] == GOOD["events"] and created["created_by"] == "token:bootstrap"
    assert created["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0}
    listed = (await api.get("/webhooks")).json()
    assert [h["id"] for h in listed] == [created["id"]]
    one = await api.get(f"/webhooks/{created['id']}")
    assert one.json() == created
    deliveries = await api.get(f"/webhooks/{created['id']}/deliveries")
    assert deliveries.status_code == 200 and deliveries.json() == []
    for text in (r.text, one.text, (await api.get("/webhooks")).text):
        assert SECRET not in text and '"secret"' not in text
    assert (await api.delete(f"/webhooks/{created['id']}")).status_code == 204
    assert (await api.get(f"/webhooks/{created['id']}")).status_code == 404
    assert (await api.delete(f"/webhooks/{created['id']}")).status_code == 404
    assert (await api.get(f"/webhooks/{created['id']}/deliveries")).status_code == 404


async def test_without_a_secret_nothing_is_signed(api: httpx.AsyncClient) -> None:
    """secret is optional; the subscription then says secret_set: false."""
    r = await api.post("/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["*"]})
    assert r.status_code == 201, r.text
    assert r.json()["secret_set"] is False and r.json()["format"] == "json"


@pytest.mark.parametrize("scope", ["read", "deploy", "operate"])
async def test_only_admin_tokens_manage_webhooks(api: httpx.AsyncClient, scope: str) -> None:
    """A subscription's URL may hold a credential: every webhook route needs the admin scope."""
    headers = await token(api, scope)
    hook = (await api.post("/webhooks", json=GOOD)).json()
    calls = [
        ("POST", "/webhooks", GOOD),
        ("GET", "/webhooks", None),
        ("GET", f"/webhooks/{hook['id']}", None),
        ("GET", f"/webhooks/{hook['id']}/deliveries", None),
        ("DELETE", f"/webhooks/{hook['id']}", None),
    ]
    for method, path, body in calls:
        r = await api.request(method, path, json=body, headers=headers)
        assert r.status_code == 403, (method, path, r.text)
        r = await api.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401, (method, path, r.text)
    assert (await api.get(f"/webhooks/{hook['id']}")).status_code == 200, "nothing was deleted"


async def test_bad_input_lists_every_problem_and_never_echoes_the_secret(api: httpx.AsyncClient) -> None:
    """Scheme, unknown kinds (each by index), format and a short secret, all in one 422; nothing stored."""
    bad: dict[str, Any] = {
        "url": "ftp://files.example.com/x",
        "events": ["completed", "finished", "health_check"],
        "secret": "short-secret",
        "format": "xml",
        "extra": 1,
    }
    r = await api.post("/webhooks", json=bad)
    assert r.status_code == 422, r.text
    problems = {tuple(p["loc"]): p["msg"] for p in r.json()["detail"]}
    assert problems[("body", "url")] == "url must start with http:// or https://"
    assert "unknown event kind 'finished'" in problems[("body", "events", 1)]
    assert "unknown event kind 'health_check'" in problems[("body", "events", 2)]
    assert ("body", "secret") in problems and ("body", "format") in problems and ("body", "extra") in problems
    assert "short-secret" not in r.text
    assert (await api.get("/webhooks")).json() == []


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"url": "https://x.example", "events": []}, ("body", "events")),
        ({"url": "https://x.example", "events": ["completed", "completed"]}, ("body", "events")),
        ({"url": "http:///nohost", "events": ["completed"]}, ("body", "url")),
        ({"url": "https://x.example/a b", "events": ["completed"]}, ("body", "url")),
        ({"events": ["completed"]}, ("body", "url")),
    ],
)
async def test_more_bad_subscriptions(
    api: httpx.AsyncClient, body: dict[str, Any], where: tuple[str, ...]
) -> None:
    """Empty or repeated kinds, a URL without a host or with spaces, a missing URL: 422 at the field."""
    r = await api.post("/webhooks", json=body)
    assert r.status_code == 422, r.text
    assert where in {tuple(p["loc"]) for p in r.json()["detail"]}


async def test_deliveries_page_rejects_unknown_status(api: httpx.AsyncClient) -> None:
    """The deliveries filter takes pending, delivered or failed."""
    hook = (await api.post("/webhooks", json=GOOD)).json()
    r = await api.get(f"/webhooks/{hook['id']}/deliveries", params={"status": "lost"})
    assert r.status_code == 422
    r = await api.get(f"/webhooks/{hook['id']}/deliveries", params={"status": "failed", "limit": 5})
    assert r.status_code == 200 and r.json() == []
