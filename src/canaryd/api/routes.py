"""HTTP routes of /api/v1. Each validates, calls one service function and returns.

Every route is written out as its own function (so `grep "def promote"` finds the promote route) with a
summary, a description, a typed response model and its error responses, which /docs and /redoc show.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response, status

from canaryd.api.deps import (
    AdminAccess,
    DeployAccess,
    OperateAccess,
    ReadAccess,
    RuntimeDep,
    SessionDep,
    principals_of,
    runtime_of,
)
from canaryd.db.models import Application, Server
from canaryd.services import deployments, inventory, tokens
from canaryd.services.schemas import (
    ActionRequest,
    ApplicationCreate,
    ApplicationOut,
    DeploymentCreate,
    DeploymentEventOut,
    DeploymentStatus,
    ErrorOut,
    ServerCreate,
    ServerOut,
    ServerPatch,
    TokenCreate,
    TokenInfo,
    TokenOut,
    TokenRow,
)

router = APIRouter(prefix="/api/v1")
Limit = Annotated[int, Query(ge=1, le=500, description="at most this many items")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="skip this many items")]
DeploymentId = Annotated[int, Path(description="the deployment's id")]
ApplicationId = Annotated[int, Path(description="the application's id")]
ServerId = Annotated[int, Path(description="the server's id")]
TokenId = Annotated[int, Path(description="the token's id")]

_E: dict[int, str] = {
    401: "Missing or invalid bearer token (`Authorization: Bearer <token>`).",
    403: "The token's scope does not allow this (read ⊂ deploy ⊂ operate ⊂ admin).",
    404: "No such object.",
    409: "The current state does not allow this; the message says why.",
    413: "The request body is larger than `CANARYD_MAX_BODY_BYTES` (1 MiB by default).",
    422: "The request is invalid; `detail` lists every problem at once and nothing was changed.",
}


def errors(*codes: int, **overrides: str) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route: each is `{"detail": ...}` (ErrorOut)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in (401, 403, *codes, 413, 422):
        out[code] = {"model": ErrorOut, "description": overrides.get(f"e{code}", _E[code])}
    return out


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
        "green_port": app.green_port,
        "health_path": app.health_path,
        "server_ids": app.server_ids,
        "current_version": app.current_version,
        "deploy_command": app.deploy_command,
        "stop_command": app.stop_command,
        "proxy": app.proxy,
        "proxy_generation": app.proxy_generation,
        "deployment_defaults": app.deployment_defaults,
        "created_at": app.created_at.isoformat(),
    }


# --- servers -------------------------------------------------------------------------------------------------


@router.post(
    "/servers",
    status_code=status.HTTP_201_CREATED,
    tags=["servers"],
    summary="Register a server",
    response_model=ServerOut,
    responses=errors(409, e409="A server with this name already exists."),
)
async def create_server(payload: ServerCreate, session: SessionDep, _: AdminAccess) -> dict[str, Any]:
    """Registers a server that applications can run on (admin scope). `transport` is `ssh` (host keys are
    always checked against `CANARYD_SSH_KNOWN_HOSTS`) or `local` (commands run on canaryd's own host)."""
    return server_view(await inventory.create_server(session, payload))


@router.get(
    "/servers", tags=["servers"], summary="List servers", response_model=list[ServerOut], responses=errors()
)
async def list_servers(
    session: SessionDep, _: ReadAccess, limit: Limit = 100, offset: Offset = 0
) -> list[dict[str, Any]]:
    """Every registered server, oldest first (read scope)."""
    return [server_view(s) for s in await inventory.list_servers(session, limit, offset)]


@router.get(
    "/servers/{server_id}",
    tags=["servers"],
    summary="Get a server",
    response_model=ServerOut,
    responses=errors(404),
)
async def get_server(server_id: ServerId, session: SessionDep, _: ReadAccess) -> dict[str, Any]:
    """One server (read scope)."""
    return server_view(await inventory.get_server(session, server_id))


# --- applications --------------------------------------------------------------------------------------------


@router.post(
    "/applications",
    status_code=status.HTTP_201_CREATED,
    tags=["applications"],
    summary="Register an application",
    response_model=ApplicationOut,
    responses=errors(404, 409, e404="A server in server_ids (or the proxy's server) does not exist."),
)
async def create_application(payload: ApplicationCreate, rt: RuntimeDep, _: AdminAccess) -> dict[str, Any]:
    """Registers an application (admin scope); its proxy serves it from all its servers before this
    returns. A configuration the proxy refuses is a 422 and nothing is registered."""
    return application_view(await inventory.create_application(rt, payload))


@router.get(
    "/applications",
    tags=["applications"],
    summary="List applications",
    response_model=list[ApplicationOut],
    responses=errors(),
)
async def list_applications(
    session: SessionDep, _: ReadAccess, limit: Limit = 100, offset: Offset = 0
) -> list[dict[str, Any]]:
    """Every registered application with its servers, current version and proxy (read scope)."""
    return [application_view(a) for a in await inventory.list_applications(session, limit, offset)]


@router.get(
    "/applications/{application_id}",
    tags=["applications"],
    summary="Get an application",
    response_model=ApplicationOut,
    responses=errors(404),
)
async def get_application(
    application_id: ApplicationId, session: SessionDep, _: ReadAccess
) -> dict[str, Any]:
    """One application (read scope)."""
    return application_view(await inventory.get_application(session, application_id))


# --- deployments ---------------------------------------------------------------------------------------------


@router.post(
    "/applications/{application_id}/deployments",
    status_code=status.HTTP_201_CREATED,
    tags=["deployments"],
    summary="Start a canary deployment",
    response_model=DeploymentStatus,
    responses={
        200: {"model": DeploymentStatus, "description": "An `Idempotency-Key` replay: the first deployment."},
        **errors(
            404,
            409,
            e409="The application already has an active deployment, or the Idempotency-Key was used with "
            "a different request.",
        ),
    },
)
async def create_deployment(
    application_id: ApplicationId,
    payload: DeploymentCreate,
    rt: RuntimeDep,
    principal: DeployAccess,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(max_length=200, description="Replaying a key returns the first deployment")
    ] = None,
) -> dict[str, Any]:
    """Starts a canary deployment of `version` (deploy scope). `config` holds the canary settings
    (CanaryConfig: stages, stage_duration, judge, ...); every field has a default. Replaying an
    `Idempotency-Key` returns the first deployment (200)."""
    created = await deployments.create_deployment(
        rt, application_id, payload, idempotency_key, f"token:{principal.name}"
    )
    if created.replayed:
        response.status_code = status.HTTP_200_OK
    return created.status


@router.get(
    "/applications/{application_id}/deployments",
    tags=["deployments"],
    summary="List an application's deployments",
    response_model=list[DeploymentStatus],
    responses=errors(),
)
async def list_application_deployments(
    application_id: ApplicationId, session: SessionDep, _: ReadAccess, limit: Limit = 50, offset: Offset = 0
) -> list[dict[str, Any]]:
    """The application's deployments, newest first, as status objects (read scope)."""
    return await deployments.list_deployments(session, application_id, limit, offset)


@router.get(
    "/deployments",
    tags=["deployments"],
    summary="List deployments",
    response_model=list[DeploymentStatus],
    responses=errors(),
)
async def list_deployments(
    session: SessionDep,
    _: ReadAccess,
    response: Response,
    limit: Limit = 50,
    offset: Offset = 0,
    application_id: Annotated[int | None, Query(ge=1)] = None,
    status: Annotated[inventory.DeploymentState | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=18)] = None,
) -> list[dict[str, Any]]:
    """Every deployment as a status object (read scope), newest first. Filters: `application_id`, `status` (canary_status). Pages: pass the `X-Next-Cursor`
    header of an answer as `cursor` (absent on the last page); `offset` is kept for older clients."""
    if offset and application_id is None and status is None and cursor is None:
        return await deployments.list_deployments(session, None, limit, offset)
    rows, next_cursor = await inventory.page_deployments(session, application_id, status, cursor, limit)
    if next_cursor is not None:
        response.headers["X-Next-Cursor"] = next_cursor
    return rows


@router.get(
    "/deployments/{deployment_id}",
    tags=["deployments"],
    summary="Get a deployment's status",
    response_model=DeploymentStatus,
    responses=errors(404),
)
async def get_deployment(deployment_id: DeploymentId, request: Request, _: ReadAccess) -> dict[str, Any]:
    """The status object (read scope). For a live view, open the WebSocket
    `/api/v1/deployments/{deployment_id}/ws` (see the API description above)."""
    # The runtime from the request, not a dependency: the hottest route keeps its dependencies to the
    # token check (FastAPI's machinery was a quarter of its CPU).
    return await deployments.read_status(runtime_of(request).read_sessions, deployment_id)


@router.get(
    "/deployments/{deployment_id}/events",
    tags=["deployments"],
    summary="A deployment's history",
    response_model=list[DeploymentEventOut],
    responses=errors(404),
)
async def get_events(
    deployment_id: DeploymentId,
    session: SessionDep,
    _: ReadAccess,
    after_seq: Annotated[int, Query(ge=0, le=2**31 - 1, description="only events with a larger seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[dict[str, Any]]:
    """History, oldest first (read scope); each stage transition carries its metrics snapshot, reasons and
    actor."""
    return await deployments.list_events(session, deployment_id, after_seq, limit)


_ACTION_RESPONSES = errors(
    404, 409, e409="The deployment's state does not allow this action; the message says why."
)
_PROMOTE_EXAMPLES = {
    "full": {"summary": "to every server now", "value": {"to": "full"}},
    "next": {"summary": "to the next stage", "value": {"to": "next", "reason": "dashboards look fine"}},
}


@router.post(
    "/deployments/{deployment_id}/promote",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["actions"],
    summary="Promote the canary",
    response_model=DeploymentStatus,
    responses=_ACTION_RESPONSES,
)
async def promote(
    deployment_id: DeploymentId,
    rt: RuntimeDep,
    principal: OperateAccess,
    body: Annotated[ActionRequest | None, Body(openapi_examples=_PROMOTE_EXAMPLES)] = None,
) -> dict[str, Any]:
    """Promotes the canary (operate scope): `{"to": "full"}` (the default) skips the remaining stages and
    puts the new version on every server, one at a time; `{"to": "next"}` moves to the next stage (after the
    last stage it is promotion itself). Allowed while monitoring or paused."""
    return await deployments.act(
        rt, deployment_id, "promote", body or ActionRequest(), f"token:{principal.name}"
    )


@router.post(
    "/deployments/{deployment_id}/rollback",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["actions"],
    summary="Roll back",
    response_model=DeploymentStatus,
    responses=_ACTION_RESPONSES,
)
async def rollback(
    deployment_id: DeploymentId,
    rt: RuntimeDep,
    principal: OperateAccess,
    body: Annotated[
        ActionRequest | None,
        Body(openapi_examples={"reason": {"summary": "with a reason", "value": {"reason": "pager: 5xx"}}}),
    ] = None,
) -> dict[str, Any]:
    """Cuts the canary's traffic at once, then restores the previous version everywhere (operate scope).
    The `reason` is kept in the history. Allowed in every active state."""
    return await deployments.act(
        rt, deployment_id, "rollback", body or ActionRequest(), f"token:{principal.name}"
    )


@router.post(
    "/deployments/{deployment_id}/pause",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["actions"],
    summary="Pause",
    response_model=DeploymentStatus,
    responses=_ACTION_RESPONSES,
)
async def pause(
    deployment_id: DeploymentId, rt: RuntimeDep, principal: OperateAccess, body: ActionRequest | None = None
) -> dict[str, Any]:
    """Holds the current stage and split (operate scope): no advance, no automatic decision, until resumed.
    Allowed while deploying or monitoring."""
    return await deployments.act(
        rt, deployment_id, "pause", body or ActionRequest(), f"token:{principal.name}"
    )


@router.post(
    "/deployments/{deployment_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["actions"],
    summary="Resume",
    response_model=DeploymentStatus,
    responses=_ACTION_RESPONSES,
)
async def resume(
    deployment_id: DeploymentId, rt: RuntimeDep, principal: OperateAccess, body: ActionRequest | None = None
) -> dict[str, Any]:
    """Resumes a paused deployment where it was (operate scope); the stage's clock restarts, the traffic
    seen so far in the stage still counts."""
    return await deployments.act(
        rt, deployment_id, "resume", body or ActionRequest(), f"token:{principal.name}"
    )


@router.get(
    "/whoami",
    tags=["tokens"],
    summary="The token's name and scope",
    response_model=TokenInfo,
    responses={401: {"model": ErrorOut, "description": _E[401]}},
)
async def whoami(principal: ReadAccess) -> dict[str, str]:
    """The name and scope of the token this request carries, so a client (the console) can offer only the
    actions the scope allows."""
    return {"name": principal.name, "scope": principal.scope}


# --- tokens --------------------------------------------------------------------------------------------------


@router.post(
    "/tokens",
    status_code=status.HTTP_201_CREATED,
    tags=["tokens"],
    summary="Create an API token",
    response_model=TokenOut,
    responses=errors(),
)
async def create_token(payload: TokenCreate, session: SessionDep, _: AdminAccess) -> dict[str, Any]:
    """Creates an API token (admin scope), optionally expiring after `expires_in` seconds; the token is in
    this response only and is stored hashed."""
    token, row = await tokens.create_token_row(
        session, payload.name, payload.scope, expires_in=payload.expires_in
    )
    return {**tokens.token_view(row), "token": token}


@router.patch(
    "/servers/{server_id}",
    tags=["servers"],
    summary="Change a server",
    response_model=ServerOut,
    responses={
        **errors(
            404,
            409,
            e409="An application using the server has an active deployment, or is being changed.",
            e422="The request is invalid, or a proxy refused the configuration with the new host; nothing "
            "was changed and every proxy is back at its previous configuration.",
        ),
        502: {
            "model": ErrorOut,
            "description": "A proxy could not be reached; every proxy is back at its previous configuration.",
        },
    },
)
async def update_server(
    server_id: ServerId, patch: ServerPatch, rt: RuntimeDep, _: AdminAccess
) -> dict[str, Any]:
    """Changes fields of a server (name, host, transport, ssh_port, ssh_user, labels; admin scope), validated
    as on creation. 409 while a deployment of an application using it is active. A new `host` is pushed to
    the proxy of every application using the server, each proven live, before it counts; if any proxy fails,
    every one is put back and nothing changes."""
    return server_view(await inventory.update_server(rt, server_id, patch.model_dump(exclude_unset=True)))


@router.delete(
    "/servers/{server_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["servers"],
    summary="Delete a server",
    response_class=Response,
    responses=errors(404, 409, e409="An application uses the server."),
)
async def delete_server(server_id: ServerId, session: SessionDep, _: AdminAccess) -> Response:
    """Deletes a server that no application uses, as an instance or as its proxy (admin scope)."""
    await inventory.delete_server(session, server_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/tokens", tags=["tokens"], summary="List API tokens", response_model=list[TokenRow], responses=errors()
)
async def list_tokens(
    session: SessionDep, _: AdminAccess, include_revoked: bool = False
) -> list[dict[str, Any]]:
    """Tokens with their name, scope, creation, expiry and revocation (admin scope); never a token or its
    hash."""
    return await tokens.list_tokens(session, include_revoked=include_revoked)


@router.delete(
    "/tokens/{token_id}",
    tags=["tokens"],
    summary="Revoke an API token",
    response_model=TokenRow,
    responses=errors(404, 409, e409="The token was already revoked."),
)
async def revoke_token(
    token_id: TokenId, request: Request, session: SessionDep, _: AdminAccess
) -> dict[str, Any]:
    """Revokes a token (admin scope): this replica refuses it (401) from the next request on, every other
    replica within `CANARYD_TOKEN_CACHE_SECONDS` (2 s by default)."""
    principals_of(request).forget(token_id)  # before the revocation commits (see api/principals.py)
    return await tokens.revoke_token(session, token_id)


@router.delete(
    "/applications/{application_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["applications"],
    summary="Delete an application",
    response_class=Response,
    responses={
        **errors(404, 409, e409="The application has an active deployment, or another change is under way."),
        502: {
            "model": ErrorOut,
            "description": "The proxy refused; the application stays registered and served.",
        },
    },
)
async def delete_application(application_id: ApplicationId, rt: RuntimeDep, _: AdminAccess) -> Response:
    """Takes the application out of its proxy (proven), then deletes it and its deployment history (admin)."""
    await inventory.delete_application(rt, application_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/applications/{application_id}",
    tags=["applications"],
    summary="Change an application",
    response_model=ApplicationOut,
    responses={
        **errors(404, 409, e409="The application has an active deployment, or another change is under way."),
        502: {
            "model": ErrorOut,
            "description": "The proxy could not be reached; the previous configuration is back.",
        },
    },
)
async def update_application(
    application_id: ApplicationId, payload: inventory.ApplicationUpdate, rt: RuntimeDep, _: AdminAccess
) -> dict[str, Any]:
    """Changes an application (admin scope); a new port, server list or proxy settings are proven live at the
    proxy before they count, and put back if they cannot be."""
    return application_view(await inventory.update_application(rt, application_id, payload))
