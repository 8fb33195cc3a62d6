"""HTTP routes of /api/v1. Each validates, calls one service function and returns."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from canaryd.api.deps import AdminAccess, DeployAccess, OperateAccess, ReadAccess, RuntimeDep, SessionDep
from canaryd.api.schemas import ActionRequest, ApplicationCreate, DeploymentCreate, ServerCreate, TokenCreate
from canaryd.db.models import Application, Server
from canaryd.services import deployments, inventory, tokens

router = APIRouter(prefix="/api/v1")
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]


def server_view(server: Server) -> dict[str, Any]:
    return {
        "id": server.id,
        "name": server.name,
        "host": server.host,
        "transport": server.transport,
        "ssh_port": server.ssh_port,
        "ssh_user": server.ssh_user,
        "labels": server.labels,
        "created_at": server.created_at.isoformat(),
    }


def application_view(app: Application) -> dict[str, Any]:
    return {
        "id": app.id,
        "name": app.name,
        "port": app.port,
        "health_path": app.health_path,
        "server_ids": app.server_ids,
        "current_version": app.current_version,
        "deploy_command": app.deploy_command,
        "stop_command": app.stop_command,
        "proxy": app.proxy,
        "proxy_generation": app.proxy_generation,
        "created_at": app.created_at.isoformat(),
    }


@router.post("/servers", status_code=status.HTTP_201_CREATED, tags=["servers"])
async def create_server(payload: ServerCreate, session: SessionDep, _: AdminAccess) -> dict[str, Any]:
    return server_view(await inventory.create_server(session, payload))


@router.get("/servers", tags=["servers"])
async def list_servers(
    session: SessionDep, _: ReadAccess, limit: Limit = 100, offset: Offset = 0
) -> list[dict[str, Any]]:
    return [server_view(s) for s in await inventory.list_servers(session, limit, offset)]


@router.get("/servers/{server_id}", tags=["servers"])
async def get_server(server_id: int, session: SessionDep, _: ReadAccess) -> dict[str, Any]:
    return server_view(await inventory.get_server(session, server_id))


@router.post("/applications", status_code=status.HTTP_201_CREATED, tags=["applications"])
async def create_application(payload: ApplicationCreate, rt: RuntimeDep, _: AdminAccess) -> dict[str, Any]:
    """Registers an application; its proxy serves it from all its servers before this returns."""
    return application_view(await inventory.create_application(rt, payload))


@router.get("/applications", tags=["applications"])
async def list_applications(
    session: SessionDep, _: ReadAccess, limit: Limit = 100, offset: Offset = 0
) -> list[dict[str, Any]]:
    return [application_view(a) for a in await inventory.list_applications(session, limit, offset)]


@router.get("/applications/{application_id}", tags=["applications"])
async def get_application(application_id: int, session: SessionDep, _: ReadAccess) -> dict[str, Any]:
    return application_view(await inventory.get_application(session, application_id))


@router.post(
    "/applications/{application_id}/deployments",
    status_code=status.HTTP_201_CREATED,
    tags=["deployments"],
    responses={409: {"description": "the application already has an active deployment"}},
)
async def create_deployment(
    application_id: int,
    payload: DeploymentCreate,
    rt: RuntimeDep,
    principal: DeployAccess,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Starts a canary deployment. Replaying an `Idempotency-Key` returns the first deployment (200)."""
    created = await deployments.create_deployment(
        rt, application_id, payload, idempotency_key, f"token:{principal.name}"
    )
    if created.replayed:
        response.status_code = status.HTTP_200_OK
    return created.status


@router.get("/applications/{application_id}/deployments", tags=["deployments"])
async def list_application_deployments(
    application_id: int, session: SessionDep, _: ReadAccess, limit: Limit = 50, offset: Offset = 0
) -> list[dict[str, Any]]:
    return await deployments.list_deployments(session, application_id, limit, offset)


@router.get("/deployments", tags=["deployments"])
async def list_deployments(
    session: SessionDep, _: ReadAccess, limit: Limit = 50, offset: Offset = 0
) -> list[dict[str, Any]]:
    return await deployments.list_deployments(session, None, limit, offset)


@router.get("/deployments/{deployment_id}", tags=["deployments"])
async def get_deployment(deployment_id: int, session: SessionDep, _: ReadAccess) -> dict[str, Any]:
    return await deployments.get_status(session, deployment_id)


@router.get("/deployments/{deployment_id}/events", tags=["deployments"])
async def get_events(
    deployment_id: int,
    session: SessionDep,
    _: ReadAccess,
    after_seq: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[dict[str, Any]]:
    """History, oldest first; each stage transition carries its metrics snapshot, reasons and actor."""
    return await deployments.list_events(session, deployment_id, after_seq, limit)


def _action_route(action: str) -> None:
    async def run(
        deployment_id: int, rt: RuntimeDep, principal: OperateAccess, body: ActionRequest | None = None
    ) -> dict[str, Any]:
        return await deployments.act(
            rt, deployment_id, action, body or ActionRequest(), f"token:{principal.name}"
        )

    run.__name__ = f"{action}_deployment"
    run.__doc__ = {
        "promote": 'Promotes the canary: to every server, or just to the next stage with `{"to": "next"}`.',
        "rollback": "Cuts the canary's traffic at once, then restores the previous version everywhere.",
        "pause": "Holds the current stage: no advance, no automatic decision, until resumed.",
        "resume": "Resumes a paused deployment where it was; the stage's clock restarts.",
    }[action]
    router.post(
        f"/deployments/{{deployment_id}}/{action}",
        status_code=status.HTTP_202_ACCEPTED,
        tags=["deployments"],
        responses={409: {"description": "the deployment's state does not allow this action"}},
    )(run)


for _action in ("promote", "rollback", "pause", "resume"):
    _action_route(_action)


@router.post("/tokens", status_code=status.HTTP_201_CREATED, tags=["tokens"])
async def create_token(payload: TokenCreate, session: SessionDep, _: AdminAccess) -> dict[str, str]:
    """Creates an API token; the token is in this response only and is stored hashed."""
    return {
        "name": payload.name,
        "scope": payload.scope,
        "token": await tokens.create_token(session, payload.name, payload.scope),
    }


@router.delete(
    "/applications/{application_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["applications"],
    responses={
        409: {"description": "the application has an active deployment"},
        502: {"description": "the proxy refused; the application stays registered and served"},
    },
)
async def delete_application(application_id: int, rt: RuntimeDep, _: AdminAccess) -> None:
    """Removes the application from its proxy (proven), then deletes it and its deployment history."""
    await inventory.delete_application(rt, application_id)


@router.patch(
    "/applications/{application_id}",
    tags=["applications"],
    responses={
        409: {"description": "the application has an active deployment"},
        502: {"description": "the proxy could not be reached; the previous configuration is back"},
    },
)
async def update_application(
    application_id: int, payload: inventory.ApplicationUpdate, rt: RuntimeDep, _: AdminAccess
) -> dict[str, Any]:
    """Changes an application; a new port, server list or proxy settings are proven live before they count."""
    return application_view(await inventory.update_application(rt, application_id, payload))
