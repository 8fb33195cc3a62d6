"""Servers and applications: registering them, and pushing an application's first proxy configuration."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError, field_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.db.engine import unit_of_work
from canaryd.db.models import Application, ApplicationServer, Server
from canaryd.db.repositories import ApplicationRepository, DeploymentRepository, ServerRepository
from canaryd.domain.config import Command, HealthPath, Name, ProxySpec, StrictModel
from canaryd.domain.defaults import CanaryConfigOverrides, defaults_problems, set_fields
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import State
from canaryd.engine.proxies import backends_json, make_proxy
from canaryd.engine.views import deployment_status
from canaryd.proxies.base import Proxy, ProxyConfigError, RouteTable
from canaryd.proxies.switch import PROXY_ERRORS, NotServedError, restore, switch
from canaryd.proxies.traefik import table_from_applied
from canaryd.runtime import Runtime
from canaryd.services.errors import Conflict, Invalid, NotFound, ProxyFailed, problem
from canaryd.services.schemas import DEFAULTS_DOC, ApplicationCreate, ServerCreate

logger = logging.getLogger(__name__)


async def create_server(session: AsyncSession, payload: ServerCreate) -> Server:
    repo = ServerRepository(session)
    if await repo.by_name(payload.name):
        raise Conflict(f"a server named {payload.name!r} already exists")
    server = Server(**payload.model_dump())
    try:
        return await repo.add(server)
    except IntegrityError as exc:
        raise Conflict(f"a server named {payload.name!r} already exists") from exc


async def get_server(session: AsyncSession, server_id: int) -> Server:
    server = await ServerRepository(session).get(server_id)
    if server is None:
        raise NotFound(f"server {server_id} not found")
    return server


async def list_servers(session: AsyncSession, limit: int, offset: int) -> Sequence[Server]:
    return await ServerRepository(session).list(limit, offset)


async def create_application(rt: Runtime, payload: ApplicationCreate) -> Application:
    """Registers an application and makes its proxy serve it from all its servers at the current version.

    The application is committed first (generation 0: not deployable yet), because a proxy that pulls its
    configuration from canaryd (Traefik's HTTP provider) must be able to read it while canaryd verifies it.
    If the proxy refuses the configuration, the application is deleted again and the proxy keeps (or gets
    back) its previous configuration.
    """
    async with unit_of_work(rt.sessions) as session:
        app, proxy_server, pool = await _insert_application(session, payload, rt.settings.min_stage_duration)
    backends = desired_backends(
        State.PENDING, pool, frozenset(), app.current_version, 0.0, None, payload.proxy.weight_limit
    )
    proxy = make_proxy(app, proxy_server, rt.transports, rt.http, rt.nginx_masters)
    table = RouteTable(app.id, app.name, tuple(backends), 1)
    try:
        await switch(proxy, table, last=None)  # on failure the proxy no longer has the application
    except BaseException as exc:
        # Also when cancelled (the client went away, the server stops): the registration did not finish.
        await asyncio.shield(_forget(rt, app.id))
        if isinstance(exc, PROXY_ERRORS):
            verb = "refused" if isinstance(exc, ProxyConfigError) else "could not apply"
            problems = [problem(["body", "proxy"], f"the proxy {verb} the configuration: {exc}")]
            raise Invalid(problems) from exc
        raise
    async with unit_of_work(rt.sessions) as session:
        stored = await ApplicationRepository(session).get(app.id)
        assert stored is not None
        stored.proxy_generation, stored.proxy_applied = table.generation, backends_json(backends)
    return stored


async def _forget(rt: Runtime, app_id: int) -> None:
    async with unit_of_work(rt.sessions) as session:
        await ApplicationRepository(session).delete(app_id)


async def _insert_application(
    session: AsyncSession, payload: ApplicationCreate, floor: int
) -> tuple[Application, Server, list[PoolServer]]:
    apps, servers = ApplicationRepository(session), ServerRepository(session)
    if await apps.by_name(payload.name):
        raise Conflict(f"an application named {payload.name!r} already exists")
    known = await servers.many([*payload.server_ids, payload.proxy.server_id])
    problems = [
        problem(["body", "server_ids", i], f"server {sid} does not exist")
        for i, sid in enumerate(payload.server_ids)
        if sid not in known
    ]
    if payload.proxy.server_id not in known:
        problems.append(
            problem(["body", "proxy", "server_id"], f"server {payload.proxy.server_id} does not exist")
        )
    problems += await _config_path_taken(apps, payload.proxy, None)
    defaults = set_fields(payload.deployment_defaults)
    problems += [problem(list(p.loc), p.msg) for p in defaults_problems(defaults, floor)]
    if problems:
        raise Invalid(problems)
    app = Application(
        name=payload.name,
        port=payload.port,
        green_port=payload.green_port,
        health_path=payload.health_path,
        current_version=payload.current_version,
        deploy_command=payload.deploy_command,
        stop_command=payload.stop_command,
        proxy=payload.proxy.model_dump(),
        deployment_defaults=defaults,
    )
    try:
        await apps.add(app, payload.server_ids)
    except IntegrityError as exc:
        raise Conflict(f"an application named {payload.name!r} already exists") from exc
    pool = [PoolServer(sid, known[sid].host, app.port, app.current_version) for sid in payload.server_ids]
    return app, known[payload.proxy.server_id], pool


async def get_application(session: AsyncSession, app_id: int) -> Application:
    app = await ApplicationRepository(session).get(app_id)
    if app is None:
        raise NotFound(f"application {app_id} not found")
    return app


async def list_applications(session: AsyncSession, limit: int, offset: int) -> Sequence[Application]:
    return await ApplicationRepository(session).list(limit, offset)


async def _config_path_taken(
    apps: ApplicationRepository, spec: ProxySpec, except_id: int | None
) -> list[dict[str, Any]]:
    """A problem when another application already owns this file on this proxy server: registering would
    overwrite its configuration."""
    offset = 0
    while page := await apps.list(500, offset):
        for other in page:
            theirs = ProxySpec.model_validate(other.proxy)
            if other.id != except_id and (theirs.server_id, theirs.config_path) == (
                spec.server_id,
                spec.config_path,
            ):
                msg = f"application {other.name!r} already owns {spec.config_path} on server {spec.server_id}"
                return [problem(["body", "proxy", "config_path"], msg)]
        offset += 500
    return []


# --- changing and deleting an application -----------------------------------------------------------------


class ApplicationUpdate(StrictModel):
    """Fields of an application that may change while no deployment is active (all optional). A change of
    `port`, `server_ids` or `proxy` re-renders the proxy configuration. `deployment_defaults` replaces the
    application's defaults whole (`{}` clears them); alone, it may change while a deployment is active (a
    deployment keeps the settings it started with)."""

    name: Name | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    green_port: int | None = Field(default=None, ge=1, le=65535)
    health_path: HealthPath | None = None
    server_ids: list[int] | None = Field(default=None, min_length=1, max_length=1000)
    deploy_command: Command | None = None
    stop_command: Command | None = None
    proxy: ProxySpec | None = None
    deployment_defaults: CanaryConfigOverrides | None = Field(default=None, description=DEFAULTS_DOC)

    @field_validator("server_ids")
    @classmethod
    def _unique(cls, ids: list[int] | None) -> list[int] | None:
        if ids is not None and len(set(ids)) != len(ids):
            raise ValueError("server_ids must not repeat a server")
        return ids


async def _reserve(rt: Runtime, app_id: int) -> tuple[Application, int]:
    """Locks the application for a change: 404 if unknown, 409 while a deployment is active or another change
    is under way. Marks it as being changed (generation 0: no deployment can start) and returns it with the
    generation it had."""
    async with unit_of_work(rt.sessions) as session:
        app = await ApplicationRepository(session).get(app_id, for_update=True)
        if app is None:
            raise NotFound(f"application {app_id} not found")
        if app.proxy_generation == 0:
            raise Conflict(f"application {app_id} is being registered or changed; try again")
        active = await DeploymentRepository(session).active_for_application(app_id)
        if active is not None:
            raise Conflict(
                f"application {app_id} has an active deployment ({active.id}, {active.canary_status}); "
                "wait for it to finish or roll it back"
            )
        generation, app.proxy_generation = app.proxy_generation, 0
    return app, generation


async def _release(rt: Runtime, app_id: int, generation: int) -> None:
    """Ends a change that did not happen: the application gets back the generation it had."""
    async with unit_of_work(rt.sessions) as session:
        app = await ApplicationRepository(session).get(app_id)
        if app is not None:
            app.proxy_generation = generation


async def _proxy_of(rt: Runtime, app: Application) -> Proxy:
    async with rt.sessions() as session:
        server = await ServerRepository(session).get(ProxySpec.model_validate(app.proxy).server_id)
    if server is None:
        raise ProxyFailed(f"the proxy server of application {app.id} no longer exists")
    return make_proxy(app, server, rt.transports, rt.http, rt.nginx_masters)


def _last_table(app: Application, generation: int) -> RouteTable:
    """The table last proven live: what the database records, at the generation it records."""
    return table_from_applied(app.id, app.name, list(app.proxy_applied), generation)


async def delete_application(rt: Runtime, app_id: int) -> None:
    """Takes the application out of its proxy, proves the proxy no longer serves it, then deletes it and its
    deployment history. If the proxy refuses, the application stays registered and served as before (502)."""
    app, generation = await _reserve(rt, app_id)
    try:
        proxy = await _proxy_of(rt, app)
        try:
            await proxy.remove(app.id)
            if not await proxy.verify_removed(app.id):
                raise NotServedError("the proxy still serves the application after its removal")
        except PROXY_ERRORS as exc:
            await restore(proxy, app.id, _last_table(app, generation))
            raise ProxyFailed(f"application {app_id} was not removed from its proxy: {exc}") from exc
    except BaseException:
        await asyncio.shield(_release(rt, app_id, generation))
        raise
    async with unit_of_work(rt.sessions) as session:
        await DeploymentRepository(session).delete_for_application(app_id)
        await ApplicationRepository(session).delete(app_id)


async def update_application(rt: Runtime, app_id: int, payload: ApplicationUpdate) -> Application:
    """Changes an application. When routing fields change, the new configuration is applied and proven live
    before the database records it; if any step fails, the previous configuration is put back (and proven)
    and nothing is recorded (422 for a refused configuration, 502 for an unreachable proxy)."""
    if payload.model_fields_set == {"deployment_defaults"} and payload.deployment_defaults is not None:
        return await _set_defaults(rt, app_id, set_fields(payload.deployment_defaults))
    app, generation = await _reserve(rt, app_id)
    applied: list[dict[str, object]] | None = None
    try:
        async with rt.sessions() as session:
            changes, pool = await _check_update(session, app, payload, rt.settings.min_stage_duration)
        routing = {"port", "server_ids", "proxy"} & set(changes)
        if routing:
            applied = await _apply_update(rt, app, changes, pool, generation)
    except BaseException:
        await asyncio.shield(_release(rt, app_id, generation))
        raise
    async with unit_of_work(rt.sessions) as session:
        stored = await ApplicationRepository(session).get(app_id)
        assert stored is not None
        for field, value in changes.items():
            if field == "server_ids":
                stored.server_links = [ApplicationServer(server_id=sid) for sid in value]
            else:
                setattr(stored, field, value)
        stored.proxy_generation = generation + 1 if applied is not None else generation
        if applied is not None:
            stored.proxy_applied = applied
    async with rt.sessions() as session:
        fresh = await ApplicationRepository(session).get(app_id)
    assert fresh is not None
    return fresh


async def _set_defaults(rt: Runtime, app_id: int, defaults: dict[str, Any]) -> Application:
    """Replaces an application's deployment defaults (422 listing every problem); deployments already
    created keep the settings they started with."""
    problems = defaults_problems(defaults, rt.settings.min_stage_duration)
    if problems:
        raise Invalid([problem(list(p.loc), p.msg) for p in problems])
    async with unit_of_work(rt.sessions) as session:
        app = await ApplicationRepository(session).get(app_id, for_update=True)
        if app is None:
            raise NotFound(f"application {app_id} not found")
        app.deployment_defaults = defaults
    async with rt.sessions() as session:
        fresh = await ApplicationRepository(session).get(app_id)
    assert fresh is not None
    return fresh


async def _check_update(
    session: AsyncSession, app: Application, payload: ApplicationUpdate, floor: int
) -> tuple[dict[str, Any], list[PoolServer]]:
    """The fields that change (proxy as a dict) and the server pool after the change; 422/409 listing
    every problem."""
    changes: dict[str, Any] = {
        field: value
        for field, value in payload.model_dump(exclude_unset=True).items()
        if value is not None or field == "stop_command"
    }
    if "proxy" in changes:
        changes["proxy"] = payload.proxy.model_dump() if payload.proxy is not None else app.proxy
    if payload.deployment_defaults is not None:
        changes["deployment_defaults"] = set_fields(payload.deployment_defaults)
    changes = {k: v for k, v in changes.items() if v != getattr(app, k)}
    apps, servers = ApplicationRepository(session), ServerRepository(session)
    if "name" in changes and await apps.by_name(changes["name"]):
        raise Conflict(f"an application named {changes['name']!r} already exists")
    spec = ProxySpec.model_validate(changes.get("proxy", app.proxy))
    server_ids = changes.get("server_ids", app.server_ids)
    known = await servers.many([*server_ids, spec.server_id])
    problems = [
        problem(["body", "server_ids", i], f"server {sid} does not exist")
        for i, sid in enumerate(server_ids)
        if sid not in known
    ]
    if spec.server_id not in known:
        problems.append(problem(["body", "proxy", "server_id"], f"server {spec.server_id} does not exist"))
    if "proxy" in changes:
        problems += await _config_path_taken(apps, spec, app.id)
    if "deployment_defaults" in changes:
        found = defaults_problems(changes["deployment_defaults"], floor)
        problems += [problem(list(p.loc), p.msg) for p in found]
    port = changes.get("port", app.port)
    if port == changes.get("green_port", app.green_port):
        where = "green_port" if "green_port" in changes else "port"
        problems.append(problem(["body", where], "green_port must differ from port"))
    if problems:
        raise Invalid(problems)
    pool = [PoolServer(sid, known[sid].host, port, app.current_version) for sid in server_ids]
    return changes, pool


async def _apply_update(
    rt: Runtime, app: Application, changes: dict[str, Any], pool: list[PoolServer], generation: int
) -> list[dict[str, object]]:
    """Applies and proves the new configuration (returns its backends); on failure puts the old one back
    and raises."""
    old_spec = ProxySpec.model_validate(app.proxy)
    new_spec = ProxySpec.model_validate(changes.get("proxy", app.proxy))
    old_proxy = await _proxy_of(rt, app)
    changed = Application(id=app.id, name=changes.get("name", app.name), proxy=new_spec.model_dump())
    new_proxy = await _proxy_of(rt, changed)
    moved = (old_spec.server_id, old_spec.config_path) != (new_spec.server_id, new_spec.config_path)
    backends = desired_backends(
        State.PENDING, pool, frozenset(), app.current_version, 0.0, None, new_spec.weight_limit
    )
    last = _last_table(app, generation)
    table = RouteTable(app.id, changed.name, tuple(backends), generation + 1)
    try:
        await switch(new_proxy, table, last=None if moved else last)
        if moved:
            try:
                await old_proxy.remove(app.id)
                if not await old_proxy.verify_removed(app.id):
                    raise NotServedError("the old proxy still serves the application")
            except PROXY_ERRORS:
                await restore(new_proxy, app.id, None)
                await restore(old_proxy, app.id, last)
                raise
    except PROXY_ERRORS as exc:
        message = f"the proxy did not take the new configuration, the previous one is back: {exc}"
        if isinstance(exc, ProxyConfigError):
            raise Invalid([problem(["body", "proxy"], message)]) from exc
        raise ProxyFailed(message) from exc
    return backends_json(backends)


# --- lifecycle of servers (ops) and the deployments list ---------------------------------------------


async def update_server(rt: Runtime, server_id: int, patch: dict[str, Any]) -> Server:
    """Changes a server's fields. Every field is validated as on creation (422 lists every problem).
    Refused (409) while an application using the server has an active deployment. A new `host` of a server
    that applications use (as an instance or as their proxy) is pushed to their proxies first, each proven
    live; if any push fails, every proxy is put back to its previous configuration (proven) and nothing is
    recorded (422 when a proxy refused the configuration, 502 when it could not be reached)."""
    async with unit_of_work(rt.sessions) as session:
        server = await get_server(session, server_id)
        merged = _merged_server(server, patch)
        users = await ApplicationRepository(session).using_server(server_id)
        await _refuse_while_active(session, server, users, "changed")
        if merged.name != server.name and await ServerRepository(session).by_name(merged.name):
            raise Conflict(f"a server named {merged.name!r} already exists")
        if merged.host == server.host or not users:
            return await _store_server(session, server, merged)
    return await _move_server(rt, server_id, merged, [app.id for app in users])


def _merged_server(server: Server, patch: dict[str, Any]) -> ServerCreate:
    current = {
        "name": server.name,
        "host": server.host,
        "transport": server.transport,
        "ssh_port": server.ssh_port,
        "ssh_user": server.ssh_user,
        "labels": server.labels,
    }
    unknown = sorted(set(patch) - set(current))
    if unknown:
        raise Invalid([problem(["body", key], f"{key} cannot be changed") for key in unknown])
    try:
        return ServerCreate.model_validate({**current, **patch})
    except ValidationError as exc:
        raise Invalid(
            [problem(["body", *e["loc"]], str(e["msg"]).removeprefix("Value error, ")) for e in exc.errors()]
        ) from exc


async def _store_server(session: AsyncSession, server: Server, merged: ServerCreate) -> Server:
    for key, value in merged.model_dump().items():
        setattr(server, key, value)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a server named {merged.name!r} already exists") from exc
    return server


async def _move_server(rt: Runtime, server_id: int, merged: ServerCreate, app_ids: list[int]) -> Server:
    """A new host for a server in use: every application using it is reserved (409 if one has an active
    deployment or another change), its proxy gets the new address proven live, then the database records
    the host and the new configurations together. Any failure puts every proxy back."""
    reserved: list[tuple[Application, int]] = []
    try:
        for app_id in app_ids:
            reserved.append(await _reserve(rt, app_id))
        moves = [await _moved_table(rt, app, generation, server_id, merged) for app, generation in reserved]
        await _push_all(moves, merged.host)
        try:
            async with unit_of_work(rt.sessions) as session:
                server = await get_server(session, server_id)
                await _store_server(session, server, merged)
                for move in moves:
                    stored = await ApplicationRepository(session).get(move.table.app_id)
                    assert stored is not None
                    stored.proxy_generation, stored.proxy_applied = move.table.generation, move.applied
        except BaseException:
            await asyncio.shield(_put_back(moves))
            raise
    except BaseException:
        for app, generation in reserved:
            await asyncio.shield(_release(rt, app.id, generation))
        raise
    logger.info(
        "server %d moved to %s; proxies of applications %s re-pointed", server_id, merged.host, app_ids
    )
    async with rt.sessions() as session:
        return await get_server(session, server_id)


@dataclass(frozen=True, slots=True)
class _Move:
    """One application's proxy configuration before (`last`, through `old`) and after a server's move."""

    old: Proxy
    new: Proxy
    last: RouteTable
    table: RouteTable
    applied: list[dict[str, object]]


async def _moved_table(
    rt: Runtime, app: Application, generation: int, server_id: int, merged: ServerCreate
) -> _Move:
    spec = ProxySpec.model_validate(app.proxy)
    async with rt.sessions() as session:
        known = await ServerRepository(session).many([*app.server_ids, spec.server_id])
    moved = Server(id=server_id, **merged.model_dump())
    hosts = {sid: merged.host if sid == server_id else known[sid].host for sid in app.server_ids}
    pool = [PoolServer(sid, hosts[sid], app.port, app.current_version) for sid in app.server_ids]
    backends = desired_backends(
        State.PENDING, pool, frozenset(), app.current_version, 0.0, None, spec.weight_limit
    )
    proxy_server = known[spec.server_id]
    return _Move(
        old=make_proxy(app, proxy_server, rt.transports, rt.http, rt.nginx_masters),
        new=make_proxy(
            app,
            moved if spec.server_id == server_id else proxy_server,
            rt.transports,
            rt.http,
            rt.nginx_masters,
        ),
        last=_last_table(app, generation),
        table=RouteTable(app.id, app.name, tuple(backends), generation + 1),
        applied=backends_json(backends),
    )


async def _push_all(moves: list[_Move], host: str) -> None:
    """Applies every move, each proven live; on the first failure puts back every proxy already changed
    (and the failing one) and raises 422 (a proxy refused) or 502 (a proxy could not be reached)."""
    done: list[_Move] = []
    try:
        for move in moves:
            done.append(move)
            await switch(move.new, move.table, last=move.last)
    except PROXY_ERRORS as exc:
        await asyncio.shield(_put_back(done))
        failed = done[-1].table
        message = (
            f"the proxy of application {failed.app_name!r} ({failed.app_id}) did not take the new host "
            f"{host}: {exc}; every proxy is back at its previous configuration and the server is unchanged"
        )
        if isinstance(exc, ProxyConfigError):
            raise Invalid([problem(["body", "host"], message)]) from exc
        raise ProxyFailed(message) from exc
    except BaseException:
        await asyncio.shield(_put_back(done))
        raise


async def _put_back(moves: list[_Move]) -> None:
    for move in reversed(moves):
        await restore(move.old, move.table.app_id, move.last)


async def delete_server(session: AsyncSession, server_id: int) -> None:
    """Deletes a server no application uses (409 naming the applications otherwise)."""
    server = await get_server(session, server_id)
    users = await ApplicationRepository(session).using_server(server_id)
    await _refuse_while_active(session, server, users, "deleted")
    if users:
        names = ", ".join(a.name for a in users)
        raise Conflict(f"server {server.name!r} is used by {names}; remove it from them first")
    await session.delete(server)


async def _refuse_while_active(
    session: AsyncSession, server: Server, users: Sequence[Application], verb: str
) -> None:
    deployments = DeploymentRepository(session)
    for app in users:
        active = await deployments.active_for_application(app.id)
        if active is not None:
            raise Conflict(
                f"server {server.name!r} cannot be {verb} while deployment {active.id} of {app.name} "
                f"is {active.canary_status}"
            )


#: States a deployments list may be filtered by (every lifecycle state).
DeploymentState = State


async def page_deployments(
    session: AsyncSession, app_id: int | None, status: str | None, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of deployments, newest first, and the cursor of the next page (None on the last one).
    The cursor is opaque to clients (today the last id shown)."""
    before: int | None = None
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 18:
            raise Invalid([problem(["query", "cursor"], "cursor must be a value from X-Next-Cursor")])
        before = int(cursor)
    rows = await DeploymentRepository(session).page(app_id, status, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    servers = await ServerRepository(session).many(
        sorted({int(s) for d in rows for s in [*d.canary_server_ids, *d.stable_server_ids]})
    )
    return [deployment_status(d, servers) for d in rows], (str(rows[-1].id) if more and rows else None)
