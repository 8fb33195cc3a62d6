"""The FastAPI application: built by a factory from the settings; clients made in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from canaryd import __version__
from canaryd.api import routes, traefik_provider, ui, webhooks, ws
from canaryd.api.frames import FramedWebSocketProtocol
from canaryd.api.limits import BodyLimitMiddleware
from canaryd.api.principals import Principals
from canaryd.db.repositories import DeploymentRepository
from canaryd.engine.scheduler import LocalScheduler
from canaryd.gctune import tune_gc
from canaryd.observability import configure_logging
from canaryd.runtime import Runtime, open_runtime
from canaryd.services.deployments import stage_floor_problems, strategy_body_problems
from canaryd.services.errors import Invalid, ServiceError
from canaryd.services.schemas import HealthOut
from canaryd.settings import Settings

log = logging.getLogger(__name__)


def _clean(errors: list[Any]) -> list[dict[str, Any]]:
    """Validation errors as JSON: the spec's words without pydantic's prefix, no exception objects."""
    return [
        {
            "loc": list(e.get("loc", [])),
            "msg": str(e.get("msg", "")).removeprefix("Value error, "),
            "type": e.get("type"),
        }
        for e in errors
    ]


DESCRIPTION = """
Canary deployments for applications on ordinary servers behind nginx, HAProxy or Traefik.

**Authorize** with an API token (`canaryd token create --name me --scope operate`, or the bootstrap token):
click *Authorize*, paste the token (without `Bearer`), then *Try it out* on any route. Scopes nest:
`read` (GET, WebSocket) ⊂ `deploy` (start deployments) ⊂ `operate` (promote, roll back, pause, resume) ⊂
`admin` (servers, applications, tokens, webhooks).

Errors are `{{"detail": "a sentence"}}`, or for 422 `{{"detail": [{{"loc": [...], "msg": "...", "type": "..."}}]}}`
listing every problem at once; nothing is half-applied. Request bodies larger than {max_body} bytes
(`CANARYD_MAX_BODY_BYTES`) are refused with 413 before they are read. The operator's console is at
[/ui](/ui).
"""

TAGS = [
    {"name": "deployments", "description": "Start canary deployments, read their status and history."},
    {"name": "actions", "description": "An operator's promote, rollback, pause and resume (operate scope)."},
    {"name": "applications", "description": "Applications, their servers and the proxy in front of them."},
    {"name": "servers", "description": "Hosts that applications and proxies run on."},
    {"name": "tokens", "description": "API tokens (admin scope)."},
    {"name": "webhooks", "description": "Notification subscriptions and their deliveries (admin scope)."},
    {"name": "operations", "description": "Health and metrics, without a token."},
    {"name": "traefik", "description": "Traefik's HTTP provider endpoint."},
]


#: Seconds an idle keep-alive connection stays open. It must outlive the client's own expiry (httpx 5 s, load
#: balancers 60 s): a server that closes first races the client's next request on that connection, which then
#: fails with a reset. 75 s is nginx's keepalive_timeout; uvicorn's default, 5 s, equals httpx's and lost that
#: race in CI.
KEEP_ALIVE_SECONDS = 75

#: How uvicorn serves the app (`canaryd serve`, the demo, the tests' servers). No permessage-deflate:
#: compressing every frame for every subscriber was a fifth of the CPU of fanning an event out to 500
#: WebSockets, and each connection's zlib state takes hundreds of KB; status and event frames are a few KB.
#: The protocol is uvicorn's websockets-sansio one that also lets the live view write a message's frame, made
#: once, to each subscriber (api/frames.py).
SERVER_OPTIONS: dict[str, Any] = {
    "ws": FramedWebSocketProtocol,
    "ws_per_message_deflate": False,
    "timeout_keep_alive": KEEP_ALIVE_SECONDS,
}


def create_app(settings: Settings, *, own_process: bool = False) -> FastAPI:
    """The app. `own_process`: the app is the process's whole work (`canaryd serve`), which may then tune
    the process's garbage collector (not a test's or the demo's app, sharing a process with other things)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings, "embedded" if settings.embedded else "api") as rt:
            app.state.runtime = rt
            if own_process:
                tune_gc()  # the process is this app's alone
            background: list[asyncio.Task[None]] = []
            if isinstance(rt.scheduler, LocalScheduler):
                rt.scheduler.bind(rt.driver().tick)
                await rt.reconcile(grace_seconds=0)  # resume what a previous process left
                background.append(asyncio.create_task(rt.reconcile_forever()))
                background.append(asyncio.create_task(rt.outbox().run_forever()))  # webhook deliveries
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app = FastAPI(
        title="canaryd",
        version=__version__,
        description=DESCRIPTION.format(max_body=settings.max_body_bytes) + ws.PROTOCOL,
        lifespan=lifespan,
        docs_url=None,  # served by api/ui.py from the package's own copies of Swagger UI and ReDoc
        redoc_url=None,
        openapi_tags=TAGS,
    )
    app.state.principals = Principals(settings.token_cache_seconds)
    app.include_router(routes.router)
    app.include_router(webhooks.router)
    app.include_router(ws.router)
    app.include_router(traefik_provider.router)
    ui.mount(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    _add_error_handlers(app, settings)
    _add_operations_routes(app)
    return app


def create_app_from_environment() -> FastAPI:
    """The app of one of `canaryd serve`'s worker processes (CANARYD_API_WORKERS above 1)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, own_process=True)


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Service errors, validation problems and database trouble as JSON answers."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        detail: Any = _clean(exc.problems) if isinstance(exc, Invalid) else exc.message
        return JSONResponse({"detail": detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = _clean(list(exc.errors()))
        if request.method == "POST" and request.url.path.endswith("/deployments"):
            # The service checks the floor once the body parses; list it with the other problems too.
            problems += stage_floor_problems(exc.body, settings.min_stage_duration)
            problems += strategy_body_problems(exc.body)
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(DataError)
    @app.exception_handler(OverflowError)
    async def out_of_range(_: Request, exc: Exception) -> JSONResponse:
        # An id or number the database column cannot hold (e.g. /servers/9223372036854775808): the
        # client's mistake, not an outage (SQLite raises OverflowError, PostgreSQL a DataError).
        log.info("value out of range for the database: %s", exc)
        return JSONResponse(
            {"detail": "a value in the request is out of range for the database"}, status_code=422
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(ConnectionError)
    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            {"detail": "the database is unavailable; nothing was changed, try again shortly"},
            status_code=503,
            headers={"Retry-After": "2"},
        )


def _add_operations_routes(app: FastAPI) -> None:
    """/healthz, /metrics (no token needed) and the middleware that times every request."""

    @app.get(
        "/healthz",
        tags=["operations"],
        summary="Liveness and database check",
        response_model=HealthOut,
        responses={503: {"description": "the database does not answer"}},
    )
    async def healthz(request: Request) -> dict[str, str]:
        """200 when the database answers (no token needed)."""
        rt: Runtime = request.app.state.runtime
        async with rt.sessions() as session:
            await session.execute(text("SELECT 1"))
        return {"status": "ok", "mode": "embedded" if rt.settings.embedded else "production"}

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["operations"],
        summary="Prometheus metrics",
        responses={
            200: {"content": {"text/plain": {"example": 'canaryd_deployments{canary_status="monitoring"} 1'}}}
        },
    )
    async def metrics(request: Request) -> Response:
        """Prometheus text format: every family is listed in docs/operations.md (no token needed)."""
        rt: Runtime = request.app.state.runtime
        async with rt.sessions() as session:
            repo = DeploymentRepository(session)
            rt.metrics.set_database_figures(await repo.count_by_status(), await repo.active_shares())
        return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestTimer)


class RequestTimer:
    """Times every HTTP request into the API's metrics, by route template (bounded labels, not raw paths).

    Plain ASGI: `@app.middleware("http")` runs each request in a task of its own behind memory streams,
    about a tenth of a status read's CPU."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, sending)
        template = getattr(scope.get("route"), "path", None) or "unmatched"
        runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
        if runtime is not None:
            runtime.metrics.api_request(scope["method"], template, status, time.perf_counter() - started)
