"""Servers and applications: registering them, and pushing an application's first proxy configuration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.db.engine import unit_of_work
from canaryd.db.models import Application, Server
from canaryd.db.repositories import ApplicationRepository, DeploymentRepository, ServerRepository
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import State
from canaryd.engine.proxies import make_proxy, push_routes
from canaryd.engine.views import deployment_status
from canaryd.proxies.base import ProxyConfigError, ProxyUnavailableError
from canaryd.runtime import Runtime
from canaryd.services.errors import Conflict, Invalid, NotFound, problem
from canaryd.services.schemas import ApplicationCreate, ServerCreate
from canaryd.transports.base import TransportError


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
        app, proxy_server, pool = await _insert_application(session, payload)
    backends = desired_backends(
        State.PENDING, pool, frozenset(), app.current_version, 0.0, None, payload.proxy.weight_limit
    )
    proxy = make_proxy(app, proxy_server, rt.transports, rt.http)
    try:
        applied = await push_routes(proxy, app, backends, 1)
    except (ProxyConfigError, ProxyUnavailableError, TransportError) as exc:
        async with unit_of_work(rt.sessions) as session:
            await ApplicationRepository(session).delete(app.id)
        verb = "refused" if isinstance(exc, ProxyConfigError) else "could not apply"
        raise Invalid([problem(["body", "proxy"], f"the proxy {verb} the configuration: {exc}")]) from exc
    async with unit_of_work(rt.sessions) as session:
        stored = await ApplicationRepository(session).get(app.id)
        assert stored is not None
        stored.proxy_generation, stored.proxy_applied = applied.generation, applied.backends
    return stored


async def _insert_application(
    session: AsyncSession, payload: ApplicationCreate
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
    if problems:
        raise Invalid(problems)
    app = Application(
        name=payload.name,
        port=payload.port,
        health_path=payload.health_path,
        current_version=payload.current_version,
        deploy_command=payload.deploy_command,
        stop_command=payload.stop_command,
        proxy=payload.proxy.model_dump(),
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


# --- lifecycle of servers (ops) and the deployments list ---------------------------------------------


async def update_server(session: AsyncSession, server_id: int, patch: dict[str, Any]) -> Server:
    """Changes a server's fields. Every field is validated as on creation (422 lists every problem).
    Refused (409) while an application using the server has an active deployment, and for `host` while any
    application uses the server: its proxy routes to the old address until the configuration is pushed
    again, which only registering does today."""
    server = await get_server(session, server_id)
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
        merged = ServerCreate.model_validate({**current, **patch})
    except ValidationError as exc:
        raise Invalid(
            [problem(["body", *e["loc"]], str(e["msg"]).removeprefix("Value error, ")) for e in exc.errors()]
        ) from exc
    users = await ApplicationRepository(session).using_server(server_id)
    await _refuse_while_active(session, server, users, "changed")
    if merged.host != server.host and users:
        names = ", ".join(a.name for a in users)
        raise Conflict(
            f"server {server.name!r} is used by {names}: its host cannot change while an application uses it"
        )
    if merged.name != server.name and await ServerRepository(session).by_name(merged.name):
        raise Conflict(f"a server named {merged.name!r} already exists")
    for key, value in merged.model_dump().items():
        setattr(server, key, value)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a server named {merged.name!r} already exists") from exc
    return server


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


#: States a deployments list may be filtered by.
DeploymentState = Literal[
    "pending",
    "deploying",
    "monitoring",
    "paused",
    "promoting",
    "completed",
    "rolling_back",
    "rolled_back",
    "failed",
]


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
