"""FastAPI dependencies: the runtime, a unit of work per request, and scoped bearer-token auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, WebSocket, status
from fastapi.security import HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from canaryd.api.principals import Principals
from canaryd.db.engine import unit_of_work
from canaryd.runtime import Runtime
from canaryd.services.tokens import Principal


# async although it awaits nothing: FastAPI runs a plain `def` dependency in its thread pool, a thread
# hand-off on every request.
async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


def runtime_of(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


def principals_of(connection: HTTPConnection) -> Principals:
    principals: Principals = connection.app.state.principals
    return principals


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(rt: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: commits if the route succeeds, rolls back if it raises."""
    async with unit_of_work(rt.sessions) as session:
        yield session


# scope="function": commit BEFORE the response is sent. FastAPI's default for yield dependencies ends them
# after the response, so a client could get 201 for a row that is not committed yet (its next request
# does not see it) or never is (a failed commit after a success answer).
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    kind, _, token = header.partition(" ")
    return token.strip() if kind.lower() == "bearer" and token.strip() else None


class TokenAuth(HTTPBearer):
    """Admits tokens whose scope includes `scope` (401 without a valid token, 403 if too weak).

    One dependency that is also the security scheme /docs shows (its Authorize button): FastAPI's
    dependency machinery was a quarter of a status read, and a scheme plus a checker were two layers."""

    def __init__(self, scope: str) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="token",
            description="An API token (`canaryd token create`, or `POST /api/v1/tokens`). Scopes: read ⊂ "
            "deploy ⊂ operate ⊂ admin.",
        )
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        token = bearer(request.headers.get("authorization"))
        principal = await principals_of(request).resolve(runtime_of(request), token)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not principal.allows(self.scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this token has scope {principal.scope!r}; this needs {self.scope!r}",
            )
        return principal


async def websocket_principal(websocket: WebSocket) -> Principal | None:
    """WebSockets authenticate with the Authorization header, or `?token=` where a browser cannot set it."""
    token = bearer(websocket.headers.get("authorization")) or websocket.query_params.get("token")
    return await principals_of(websocket).resolve(runtime_of(websocket), token)


ReadAccess = Annotated[Principal, Depends(TokenAuth("read"))]
DeployAccess = Annotated[Principal, Depends(TokenAuth("deploy"))]
OperateAccess = Annotated[Principal, Depends(TokenAuth("operate"))]
AdminAccess = Annotated[Principal, Depends(TokenAuth("admin"))]
