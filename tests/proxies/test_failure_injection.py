"""Nothing half-applied: a registration, a change, a deletion or a stage change that fails at any step leaves
the proxy with the last configuration proven live and the database without a half-registered application.

One table per proxy kind (real nginx, HAProxy, Traefik; real app instances; a real SQLite database; the
service functions the API routes call). Each row injects one transient fault into one operation:

* test: the proxy's test command refuses the file (exit 1);
* reload: the reload command fails (exit 1);
* timeout: the reload command hangs past its timeout (the transport's own timeout error);
* transport: the connection is lost while the file is written (TransportError);
* socket: HAProxy's admin socket is lost (weights are changed there);
* verify: the proxy never shows the new configuration (its probe gives a stale answer).

A fault stays armed until canaryd starts putting the previous state back (a blip, not an outage). After each
row the proxy must serve what the database records (or, after a failed registration, nothing), and the next
row starts from there; a clean registration after all rows proves that no leftover blocks a later one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fixtures.apps import AppFleet
from tests.fixtures.haproxy import start_haproxy
from tests.fixtures.nginx import free_port, start_nginx
from tests.fixtures.traefik import start_traefik

import canaryd.proxies.switch as switch_module
from canaryd.db.repositories import ApplicationRepository
from canaryd.domain.config import ProxySpec
from canaryd.domain.types import Backend, MatchRule
from canaryd.engine.proxies import make_proxy
from canaryd.proxies.base import Proxy, RouteTable
from canaryd.proxies.switch import PROXY_ERRORS, switch
from canaryd.proxies.traefik import table_from_applied
from canaryd.runtime import Runtime, open_runtime
from canaryd.services import inventory
from canaryd.services.errors import ServiceError
from canaryd.services.schemas import ApplicationCreate, ServerCreate
from canaryd.settings import Settings
from canaryd.transports.base import CommandResult, TransportError
from canaryd.transports.local import LocalTransport

HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
PROBES = ("/.canaryd/", "/api/http/services")


@dataclass
class Faults:
    """One armed fault at a time; `disarm` is called when canaryd starts putting things back."""

    spec: ProxySpec | None = None
    armed: str | None = None
    fired: list[str] = field(default_factory=list)

    def take(self, step: str) -> bool:
        if self.armed == step:
            self.fired.append(step)
            return True
        return False

    def disarm(self) -> None:
        self.armed = None


class FaultyTransport(LocalTransport):
    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    async def run(self, command: str, timeout: float) -> CommandResult:
        spec = self.faults.spec
        if spec is not None and command == spec.test_command and self.faults.take("test"):
            return CommandResult(1, "", "injected: configuration test failed")
        if spec is not None and command == spec.reload_command:
            if self.faults.take("reload"):
                return CommandResult(1, "", "injected: reload failed")
            if self.faults.take("timeout"):
                return await super().run("sleep 3", timeout=0.2)
        return await super().run(command, timeout)

    async def write_file(self, path: str, data: bytes) -> None:
        if self.faults.take("transport"):
            raise TransportError("injected: connection lost")
        await super().write_file(path, data)

    async def remove(self, path: str) -> None:
        spec = self.faults.spec
        if spec is not None and path == spec.config_path and self.faults.take("transport"):
            raise TransportError("injected: connection lost")
        await super().remove(path)

    async def unix_request(self, path: str, payload: bytes, timeout: float) -> bytes:
        if payload.startswith(b"set weight") and self.faults.take("socket"):
            raise TransportError("injected: admin socket lost")
        return await super().unix_request(path, payload, timeout)


def probe_blocker(faults: Faults) -> httpx.AsyncClient:
    """An HTTP client whose proxy probes get a stale answer while the `verify` fault is armed: the proxy
    seems to go on serving what it served before (an old generation, an unknown fingerprint or service)."""

    class Blocking(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if faults.armed == "verify" and request.url.path.startswith(PROBES):
                faults.fired.append("verify")
                return httpx.Response(200, text="0\n" if "generation" in request.url.path else "stale")
            return await super().handle_async_request(request)

    return httpx.AsyncClient(transport=Blocking(), timeout=5, trust_env=False)


@dataclass
class World:
    rt: Runtime
    faults: Faults
    spec: dict[str, Any]
    server_ids: list[int]
    proxy_id: int
    port: int
    url: str
    make_proxy: Callable[..., Proxy]


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path, sqlite_url: str, app_fleet: AppFleet, kind: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    port = free_port(HOSTS[0])
    for host in HOSTS:
        app_fleet.start(host, "v1", port)
    faults = Faults()
    stop: Callable[[], None]
    if kind == "nginx":
        nginx = start_nginx()
        spec, url, stop = nginx.spec(), f"http://{nginx.listen}/", nginx.cleanup
    elif kind == "haproxy":
        haproxy = start_haproxy()
        spec, url, stop = haproxy.spec(), haproxy.url, haproxy.cleanup
    else:
        traefik = start_traefik()
        spec, url, stop = traefik.spec(), traefik.url, traefik.cleanup
    faults.spec = spec
    settings = Settings(database_url=sqlite_url, bootstrap_token="t" * 32, min_stage_duration=1)
    try:
        async with open_runtime(settings, "api") as rt:
            rt.transports.local = FaultyTransport(faults)
            await rt.http.aclose()
            rt.http = probe_blocker(faults)
            original_restore = switch_module.restore
            default_verify_timeouts: dict[int, float] = {}

            async def restore(proxy: Proxy, app_id: int, last: RouteTable | None) -> bool:
                # The put-back is proven live within the timeout users get: the shortened one below is
                # for the injected verify failures only. With 0.6 s for the put-back too, a reload slowed by
                # a loaded machine could leave it unproven (restore is best effort) and the check below
                # looked before HAProxy served it.
                faults.disarm()
                quick = proxy.verify_timeout  # type: ignore[attr-defined]
                proxy.verify_timeout = default_verify_timeouts.get(id(proxy), quick)  # type: ignore[attr-defined]
                try:
                    return await original_restore(proxy, app_id, last)
                finally:
                    proxy.verify_timeout = quick  # type: ignore[attr-defined]

            monkeypatch.setattr(switch_module, "restore", restore)
            monkeypatch.setattr(inventory, "restore", restore)

            def quick_proxy(*args: Any) -> Proxy:
                proxy = make_proxy(*args)
                default_verify_timeouts[id(proxy)] = proxy.verify_timeout  # type: ignore[attr-defined]
                proxy.verify_timeout = 1.2 if kind == "traefik" else 0.6  # type: ignore[attr-defined]
                return proxy

            monkeypatch.setattr(inventory, "make_proxy", quick_proxy)
            async with rt.sessions() as session, session.begin():
                ids = [
                    (
                        await inventory.create_server(
                            session, ServerCreate(name=f"s{i}", host=h, transport="local")
                        )
                    ).id
                    for i, h in enumerate(HOSTS)
                ]
                proxy_id = (
                    await inventory.create_server(
                        session, ServerCreate(name="proxy", host="127.0.0.1", transport="local")
                    )
                ).id
            body = {**spec.model_dump(), "server_id": proxy_id}
            try:
                yield World(rt, faults, body, ids, proxy_id, port, url, quick_proxy)
            finally:
                await rt.http.aclose()
    finally:
        stop()


async def register(w: World, name: str) -> Any:
    payload = ApplicationCreate.model_validate(
        {
            "name": name,
            "port": w.port,
            "server_ids": w.server_ids,
            "current_version": "v1",
            "deploy_command": "true",
            "proxy": w.spec,
        }
    )
    return await inventory.create_application(w.rt, payload)


async def recorded(w: World, app_id: int) -> tuple[int, list[Any], list[int]] | None:
    async with w.rt.sessions() as session:
        app = await ApplicationRepository(session).get(app_id)
        return None if app is None else (app.proxy_generation, list(app.proxy_applied), app.server_ids)


async def serves_recorded(w: World, app_id: int) -> bool:
    """Whether the proxy serves exactly what the database records for the application (and answers 200)."""
    async with w.rt.sessions() as session:
        app = await ApplicationRepository(session).get(app_id)
        assert app is not None
        # The shipped verify timeout, not the injected steps' short one: this must succeed, and a loaded
        # machine's nginx takes longer than 0.6 s to retire the workers of a restored configuration.
        proxy = make_proxy(
            app, await _proxy_server(w, session), w.rt.transports, w.rt.http, w.rt.nginx_masters
        )
        table = table_from_applied(app.id, app.name, list(app.proxy_applied), app.proxy_generation)
    if not await proxy.verify(table):
        return False
    # Traefik, after a failed removal: its API cannot tell the restored file from the removed one it may
    # not have processed yet (same content), so the router can be missing for one throttle period.
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(40):
            if (await client.get(w.url)).status_code == 200:
                return True
            await asyncio.sleep(0.05)
    return False


async def _proxy_server(w: World, session: Any) -> Any:
    from canaryd.db.repositories import ServerRepository

    return await ServerRepository(session).get(w.proxy_id)


async def serves_nothing(w: World, app_id: int, name: str) -> bool:
    from canaryd.db.models import Application

    async with w.rt.sessions() as session:
        server = await _proxy_server(w, session)
    ghost = Application(id=app_id, name=name, proxy=w.spec)
    return await make_proxy(ghost, server, w.rt.transports, w.rt.http, w.rt.nginx_masters).verify_removed(
        app_id
    )


STEPS = {
    "nginx": ("test", "reload", "timeout", "transport", "verify"),
    "haproxy": ("test", "reload", "timeout", "transport", "verify"),
    "traefik": ("reload", "timeout", "transport", "verify"),  # Traefik has no test command
}
#: Changing weights or dropping a server on HAProxy is a weight change over the admin socket, then the file
#: (tested, not reloaded): no reload step to fail, the socket instead.
WEIGHT_STEPS = {
    "nginx": STEPS["nginx"],
    "haproxy": ("test", "transport", "socket", "verify"),
    "traefik": STEPS["traefik"],
}


async def _eventually(probe: Callable[[], Awaitable[bool]], within: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while not await probe():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def expect_failure(w: World, step: str, action: Awaitable[Any]) -> None:
    w.faults.armed, w.faults.fired = step, []
    with pytest.raises((ServiceError, *PROXY_ERRORS)):
        await action
    assert w.faults.fired, f"the {step} fault never fired"
    w.faults.disarm()


@pytest.mark.parametrize("kind", ["nginx", "haproxy", "traefik"])
async def test_a_failure_at_any_step_leaves_the_last_proven_configuration(
    kind: str, tmp_path: Path, sqlite_url: str, app_fleet: AppFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(tmp_path, sqlite_url, app_fleet, kind, monkeypatch) as w:
        config_path = w.spec["config_path"]
        # Registration: nothing registered, no file, nothing served.
        for step in STEPS[kind]:
            await expect_failure(w, step, register(w, "shop"))
            async with w.rt.sessions() as session:
                assert await ApplicationRepository(session).by_name("shop") is None, step
            assert not os.path.exists(config_path), step
            assert await serves_nothing(w, 1, "shop"), step

        app = await register(w, "shop")  # no leftover blocks it (nginx: no duplicate log_format)
        before = await recorded(w, app.id)
        assert before is not None and await serves_recorded(w, app.id)

        # A change of the routing (one server fewer): the database and the proxy stay as they were.
        for step in WEIGHT_STEPS[kind]:
            change = inventory.ApplicationUpdate(server_ids=w.server_ids[:2])
            await expect_failure(w, step, inventory.update_application(w.rt, app.id, change))
            assert await recorded(w, app.id) == before, step
            assert await serves_recorded(w, app.id), step

        # A stage change (a canary at 1 of 3 weight units), through the same switch the engine uses.
        async with w.rt.sessions() as session:
            stored = await ApplicationRepository(session).get(app.id)
            assert stored is not None
            proxy = w.make_proxy(
                stored, await _proxy_server(w, session), w.rt.transports, w.rt.http, w.rt.nginx_masters
            )
        last = table_from_applied(app.id, app.name, list(stored.proxy_applied), stored.proxy_generation)
        canary = tuple(
            Backend(b.server_id, b.host, b.port, 1 if i == 0 else 2, "canary" if i == 0 else "stable")
            for i, b in enumerate(last.backends)
        )
        for step in WEIGHT_STEPS[kind]:
            stage = RouteTable(app.id, app.name, canary, last.generation + 1)
            await expect_failure(w, step, switch(proxy, stage, last))
            if kind == "traefik":
                # Traefik may have read the failed file and hold it for its throttle while the restored one
                # is verified: it serves the last table again within a throttle period (docs/proxies.md).
                assert await _eventually(lambda: proxy.check(last), within=5.0), step
            else:
                assert await proxy.check(last), step
            assert await serves_recorded(w, app.id), step

        # Deletion: still registered, still served.
        for step in STEPS[kind]:
            await expect_failure(w, step, inventory.delete_application(w.rt, app.id))
            assert await recorded(w, app.id) == before, step
            assert await serves_recorded(w, app.id), step

        # Without faults: the change applies, the deletion removes the application from proxy and database.
        changed = await inventory.update_application(
            w.rt, app.id, inventory.ApplicationUpdate(server_ids=w.server_ids[:2])
        )
        assert changed.server_ids == w.server_ids[:2] and changed.proxy_generation == before[0] + 1
        assert await serves_recorded(w, app.id)
        await inventory.delete_application(w.rt, app.id)
        assert await recorded(w, app.id) is None
        assert not os.path.exists(config_path)
        assert await serves_nothing(w, app.id, "shop")


async def _special_canary_in_and_out(w: World, kind: str, special: Callable[[Backend], Backend]) -> None:
    """The first server made `special(first)` (bound to A/B rules, a mirror, ...) and then cut: each change
    fails at every step back to the table last proven live, then goes through clean."""
    app = await register(w, "shop")
    async with w.rt.sessions() as session:
        stored = await ApplicationRepository(session).get(app.id)
        assert stored is not None
        proxy = w.make_proxy(
            stored, await _proxy_server(w, session), w.rt.transports, w.rt.http, w.rt.nginx_masters
        )
    last = table_from_applied(app.id, app.name, list(stored.proxy_applied), stored.proxy_generation)
    changed = RouteTable(
        app.id, app.name, (special(last.backends[0]), *last.backends[1:]), last.generation + 1
    )
    cut = RouteTable(app.id, app.name, last.backends[1:], last.generation + 2)

    async def back_on(table: RouteTable) -> bool:
        # Traefik may hold a failed file for one throttle period (see the stage changes above); nginx and
        # HAProxy must serve it at once (the put-back was proven live).
        within = {"traefik": 5.0}.get(kind, 0.0)
        return await _eventually(lambda: proxy.check(table), within=within)

    for step in STEPS[kind]:
        await expect_failure(w, step, switch(proxy, changed, last))
        assert await back_on(last), step
    await switch(proxy, changed, last)
    assert await proxy.check(changed)
    for step in STEPS[kind]:
        await expect_failure(w, step, switch(proxy, cut, changed))
        assert await back_on(changed), step
    await switch(proxy, cut, changed)
    assert await proxy.check(cut) and not await proxy.check(changed)


@pytest.mark.parametrize("kind", ["nginx", "haproxy", "traefik"])
async def test_starting_or_ending_an_ab_test_never_half_applies(
    kind: str, tmp_path: Path, sqlite_url: str, app_fleet: AppFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strategy ab: putting the A/B rules in (the canary bound to them, no weight in the split) and taking
    them out again (a rollback's cut) fail at every step like any change: the proxy is back on the table
    last proven live, and the clean change then goes through."""
    rules = (MatchRule("header", "X-Beta", "equals", "1"), MatchRule("cookie", "plan", "regex", "^pro"))
    if kind == "traefik":
        rules = rules[:1]
    async with world(tmp_path, sqlite_url, app_fleet, kind, monkeypatch) as w:
        await _special_canary_in_and_out(
            w, kind, lambda first: Backend(first.server_id, first.host, first.port, 1, "canary", rules)
        )


@pytest.mark.parametrize("kind", ["nginx", "traefik"])
async def test_starting_or_ending_a_mirror_never_half_applies(
    kind: str, tmp_path: Path, sqlite_url: str, app_fleet: AppFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strategy mirror: making the canary a mirror (out of the split, given copies) and cutting it again
    fail at every step like any change: the proxy is back on the table last proven live, and the clean
    change then goes through."""
    async with world(tmp_path, sqlite_url, app_fleet, kind, monkeypatch) as w:
        await _special_canary_in_and_out(
            w, kind, lambda first: Backend(first.server_id, first.host, first.port, 1, "canary", (), 25)
        )
