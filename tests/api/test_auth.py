"""Bearer-token auth of every route and of the WebSocket; tokens are stored only as SHA-256 hashes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator
from itertools import count
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from tests.fixtures.stack import TOKEN, Stack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from canaryd.api.app import create_app
from canaryd.api.principals import Principals
from canaryd.db.engine import make_engine, make_sessionmaker, unit_of_work
from canaryd.runtime import Runtime, open_runtime
from canaryd.services.tokens import SCOPES, Principal, create_token, create_token_row
from canaryd.settings import Settings

API = "/api/v1"
PUBLIC = None
#: Every route of the application and the scope it needs (None: public). A route missing here fails
#: test_every_route_is_in_the_table, so a new route cannot escape the auth table below.
ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/static/{path}"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", f"{API}/servers"): "admin",
    ("GET", f"{API}/servers"): "read",
    ("GET", f"{API}/servers/{{server_id}}"): "read",
    ("POST", f"{API}/applications"): "admin",
    ("GET", f"{API}/applications"): "read",
    ("GET", f"{API}/applications/{{application_id}}"): "read",
    ("POST", f"{API}/applications/{{application_id}}/deployments"): "deploy",
    ("GET", f"{API}/applications/{{application_id}}/deployments"): "read",
    ("GET", f"{API}/deployments"): "read",
    ("GET", f"{API}/deployments/{{deployment_id}}"): "read",
    ("GET", f"{API}/deployments/{{deployment_id}}/events"): "read",
    ("POST", f"{API}/deployments/{{deployment_id}}/promote"): "operate",
    ("POST", f"{API}/deployments/{{deployment_id}}/rollback"): "operate",
    ("POST", f"{API}/deployments/{{deployment_id}}/pause"): "operate",
    ("POST", f"{API}/deployments/{{deployment_id}}/resume"): "operate",
    ("POST", f"{API}/tokens"): "admin",
    ("GET", f"{API}/whoami"): "read",
    ("GET", f"{API}/traefik/servers/{{server_id}}/config"): "read",
    ("DELETE", f"{API}/applications/{{application_id}}"): "admin",
    ("PATCH", f"{API}/applications/{{application_id}}"): "admin",
    ("WS", f"{API}/deployments/{{deployment_id}}/ws"): "read",
    ("PATCH", f"{API}/servers/{{server_id}}"): "admin",
    ("DELETE", f"{API}/servers/{{server_id}}"): "admin",
    ("GET", f"{API}/tokens"): "admin",
    ("DELETE", f"{API}/tokens/{{token_id}}"): "admin",
    ("POST", f"{API}/webhooks"): "admin",
    ("GET", f"{API}/webhooks"): "admin",
    ("GET", f"{API}/webhooks/{{webhook_id}}"): "admin",
    ("DELETE", f"{API}/webhooks/{{webhook_id}}"): "admin",
    ("GET", f"{API}/webhooks/{{webhook_id}}/deliveries"): "admin",
}


def flatten(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, through included routers (FastAPI nests them in recent versions)."""
    for route in routes:
        sub = getattr(route, "original_router", None)
        if sub is not None:
            yield from flatten(sub.routes, prefix + route.include_context.prefix)
            continue
        if route.__class__.__name__ == "Mount":  # static files
            yield "GET", prefix + route.path + "/{path}"
            continue
        methods = getattr(route, "methods", None)
        if not methods:  # a WebSocket route
            yield "WS", prefix + route.path
        for method in methods or ():
            if method != "HEAD":
                yield method, prefix + route.path


def test_every_route_is_in_the_table() -> None:
    """Every (method, path) that create_app serves has an entry in the auth table, and nothing else does."""
    served = set(flatten(create_app(Settings(bootstrap_token=TOKEN)).routes))
    assert served == set(ROUTES), (
        f"not in the table: {sorted(served - set(ROUTES))}; gone: {sorted(set(ROUTES) - served)}"
    )


async def make_tokens(stack: Stack) -> dict[str, str]:
    """One token per scope made over the API (`<scope>/api`) and one by the CLI's function (`<scope>/cli`)."""
    tokens: dict[str, str] = {}
    for scope in SCOPES:
        r = await stack.api.post("/tokens", json={"name": f"api-{scope}", "scope": scope})
        assert r.status_code == 201, r.text
        assert r.json()["scope"] == scope and r.json()["name"] == f"api-{scope}"
        tokens[f"{scope}/api"] = r.json()["token"]
    engine = make_engine(stack.settings.database_url)
    try:
        for scope in SCOPES:
            async with unit_of_work(make_sessionmaker(engine)) as session:
                tokens[f"{scope}/cli"] = await create_token(session, f"cli-{scope}", scope)
    finally:
        await engine.dispose()
    return tokens


async def test_route_scope_table(embedded_stack: Stack) -> None:
    """Every route × no/invalid/read/deploy/operate/admin token answers 401, 403, or passes auth, as the table says."""
    s = embedded_stack
    tokens: dict[str, str | None] = {
        "none": None,
        "invalid": "cdt_" + "x" * 43,
        "bootstrap-as-basic": f"Basic {TOKEN}",
        **await make_tokens(s),
    }
    n = count()

    def body(method: str, path: str) -> dict[str, Any] | None:
        if method != "POST":
            return None
        if path.endswith("/servers"):
            return {"name": f"auth-{next(n)}", "host": "127.0.0.9", "transport": "local"}
        if path.endswith("/tokens"):
            return {"name": f"auth-{next(n)}", "scope": "read"}
        if path.endswith("/deployments"):
            return {"version": "v2"}
        if path.endswith("/applications"):
            return {}
        return None

    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
        for (method, template), needed in ROUTES.items():
            if method == "WS":
                continue  # test_websocket_auth
            path = re.sub(r"\{[a-z_]+\}", "999999", template).replace(
                "/ui/static/999999", "/ui/static/app.js"
            )
            for who, token in tokens.items():
                headers = {}
                if token is not None:
                    headers["Authorization"] = token if token.startswith("Basic ") else f"Bearer {token}"
                r = await client.request(method, path, json=body(method, template), headers=headers)
                scope = who.split("/")[0]
                if needed is PUBLIC:
                    ok = r.status_code < 400
                elif scope not in SCOPES:
                    ok = r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer"
                elif SCOPES.index(scope) < SCOPES.index(needed):
                    ok = r.status_code == 403 and repr(needed) in r.json()["detail"]
                else:
                    ok = r.status_code not in (401, 403) and r.status_code < 500
                if not ok:
                    wrong.append(
                        f"{method} {template} with {who} (needs {needed}): {r.status_code} {r.text[:120]}"
                    )
    assert not wrong, "\n".join(wrong)


async def test_tokens_are_stored_hashed(embedded_stack: Stack) -> None:
    """api_tokens holds the SHA-256 of each token and never the token; revoked and unknown tokens get 401."""
    s = embedded_stack
    tokens = await make_tokens(s)
    assert len(set(tokens.values())) == len(tokens)
    for token in tokens.values():
        assert token.startswith("cdt_") and len(token) >= 40
    engine = make_engine(s.settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(text("SELECT * FROM api_tokens"))]
        assert sorted(r["name"] for r in rows) == sorted(
            f"{where}-{scope}" for where in ("api", "cli") for scope in SCOPES
        )
        dump = json.dumps(rows, default=str)
        for who, token in tokens.items():
            assert token not in dump, who
            assert token[4:] not in dump, who
            scope, where = who.split("/")
            row = next(r for r in rows if r["name"] == f"{where}-{scope}")
            assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
            assert row["scope"] == scope
        assert TOKEN not in dump
        assert hashlib.sha256(TOKEN.encode()).hexdigest() not in dump  # the bootstrap token is not a row
        # Each works; lower-case "bearer" is the same scheme.
        async with httpx.AsyncClient(base_url=f"{s.base}{API}", timeout=30) as client:
            for who, token in tokens.items():
                r = await client.get("/servers", headers={"Authorization": f"bearer {token}"})
                assert r.status_code == 200, (who, r.text)
            # A token revoked behind the server's back (`canaryd token revoke` is another process) is refused
            # once what the server looked up a moment ago is stale: token_cache_seconds (2 s by default).
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE api_tokens SET revoked_at = created_at WHERE name = 'api-admin'")
                )
            await asyncio.sleep(s.settings.token_cache_seconds)
            r = await client.get("/servers", headers={"Authorization": f"Bearer {tokens['admin/api']}"})
            assert r.status_code == 401, r.text
            r = await client.get("/servers", headers={"Authorization": f"Bearer {tokens['admin/cli']}"})
            assert r.status_code == 200, r.text
            for header in ("Bearer", "Bearer x y", f"Token {tokens['admin/cli']}", tokens["admin/cli"]):
                r = await client.get("/servers", headers={"Authorization": header})
                assert r.status_code == 401, (header, r.text)
    finally:
        await engine.dispose()
    # Bad scopes are refused by both ways of making tokens.
    r = await s.api.post("/tokens", json={"name": "x", "scope": "root"})
    assert r.status_code == 422, r.text
    engine = make_engine(s.settings.database_url)
    try:
        with pytest.raises(ValueError, match="scope must be one of"):
            async with unit_of_work(make_sessionmaker(engine)) as session:
                await create_token(session, "x", "root")
    finally:
        await engine.dispose()


async def _revoke_in_database(rt: Runtime, token_id: int) -> None:
    async with rt.db_engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_tokens SET revoked_at = created_at WHERE id = :id"), {"id": token_id}
        )


async def test_tokens_are_believed_for_token_cache_seconds(embedded_stack: Stack) -> None:
    """A token looked up is believed for token_cache_seconds, then looked up again; forgetting it (revoking
    through this process) makes the next request look it up, and a lookup racing the revocation is not
    believed afterwards; an expired token is refused at once although it was believed a moment ago."""
    now = [100.0]
    principals = Principals(2.0, clock=lambda: now[0])
    async with open_runtime(embedded_stack.settings, "api") as rt:
        async with unit_of_work(rt.sessions) as session:
            revoked, revoked_row = await create_token_row(session, "revoked-elsewhere", "read")
            raced, raced_row = await create_token_row(session, "raced", "operate")
            short, _ = await create_token_row(session, "short", "read", expires_in=1)

        assert await principals.resolve(rt, revoked) == Principal("revoked-elsewhere", "read")
        await _revoke_in_database(rt, revoked_row.id)  # another process: nothing tells this one
        now[0] += 1.9
        assert await principals.resolve(rt, revoked) == Principal("revoked-elsewhere", "read")
        now[0] += 0.2
        assert await principals.resolve(rt, revoked) is None

        assert await principals.resolve(rt, raced) == Principal("raced", "operate")
        principals.forget(raced_row.id)  # DELETE /tokens/{id} forgets it before its revocation commits
        assert await principals.resolve(rt, raced) == Principal("raced", "operate")  # read before the commit
        await _revoke_in_database(rt, raced_row.id)
        assert await principals.resolve(rt, raced) is None

        assert await principals.resolve(rt, short) == Principal("short", "read")
        await asyncio.sleep(1.1)  # past its expiry (wall clock), well within the cache's 2 s (frozen clock)
        assert await principals.resolve(rt, short) is None
        assert await principals.resolve(rt, "cdt_unknown") is None


async def test_concurrent_requests_share_one_token_lookup(embedded_stack: Stack) -> None:
    """Requests that arrive while a token is being looked up wait for that lookup instead of each making
    their own (when a busy process's belief runs out, its queued requests would otherwise all query)."""
    async with open_runtime(embedded_stack.settings, "api") as rt:
        async with unit_of_work(rt.sessions) as session:
            token, _ = await create_token_row(session, "busy", "read")
        lookups: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if "api_tokens" in statement:
                lookups.append(statement)

        event.listen(rt.db_engine.sync_engine, "before_cursor_execute", record)
        principals = Principals(2.0)
        got = await asyncio.gather(*(principals.resolve(rt, token) for _ in range(20)))
        assert got == [Principal("busy", "read")] * 20
        assert len(lookups) == 1


async def test_websocket_auth(embedded_stack: Stack) -> None:
    """The WebSocket refuses a missing or invalid token; with a read token it sends the status, then events."""
    s = embedded_stack
    await s.register("v1")
    r = await s.api.post("/tokens", json={"name": "watcher", "scope": "read"})
    assert r.status_code == 201, r.text
    read_token = r.json()["token"]
    r = await s.deploy("v2", {"stages": [10, 100], "stage_duration": 30, "health_check_interval": 1})
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)
    url = f"{s.base.replace('http://', 'ws://')}{API}/deployments/{dep_id}/ws"

    async def refusal(address: str, headers: dict[str, str]) -> tuple[int, str]:
        async with connect(address, additional_headers=headers, open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code, closed.value.rcvd.reason

    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {read_token}"}):
        assert await refusal(url, headers) == (4401, "missing or invalid bearer token"), headers
    assert (await refusal(f"{url}?token=not-a-token", {}))[0] == 4401
    unknown = url.replace(f"/deployments/{dep_id}/", "/deployments/999999/")
    assert await refusal(unknown, {"Authorization": f"Bearer {read_token}"}) == (
        4404,
        "deployment 999999 not found",
    )
    assert (await refusal(f"{url}?after_seq=-1", {"Authorization": f"Bearer {read_token}"}))[0] == 4422

    async with connect(
        url, additional_headers={"Authorization": f"Bearer {read_token}"}, open_timeout=10
    ) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "status"
        assert first["id"] == dep_id and first["canary_status"] == "monitoring"
        for key in (
            "application_id",
            "version",
            "strategy",
            "status",
            "current_stage",
            "total_stages",
            "current_traffic_percentage",
            "target_traffic_percentage",
            "canary_servers",
            "stable_servers",
            "metrics",
            "stage_started_at",
            "next_stage_at",
            "can_promote",
            "can_rollback",
            "reasons",
        ):
            assert key in first, key
        r = await s.api.post(f"/deployments/{dep_id}/pause")
        assert r.status_code == 202, r.text
        kinds: list[str] = []
        while "paused" not in kinds:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message.get("type") == "event":
                kinds.append(message["kind"])
                assert message["deployment_id"] == dep_id
        paused = (await s.events(dep_id))[-1]
        assert paused["kind"] == "paused" and paused["actor"] == "token:bootstrap"

    # A browser cannot set headers: ?token= works too.
    async with connect(f"{url}?token={read_token}", open_timeout=10) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "status" and first["canary_status"] == "paused"

    r = await s.api.post(f"/deployments/{dep_id}/rollback")
    assert r.status_code == 202, r.text
    await s.wait(dep_id, timeout=60)
