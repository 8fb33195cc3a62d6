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
from starlette.types import ASGIApp, Receive, Scope, Send

from canaryd import __version__
from canaryd.api import routes, traefik_provider, ws
from canaryd.db.repositories import DeploymentRepository
from canaryd.domain.config import STAGE_DURATION_FLOOR
from canaryd.engine.tick import Engine
from canaryd.runtime import Runtime, open_runtime
from canaryd.services.deployments import reconcile
from canaryd.services.errors import Invalid, ServiceError
from canaryd.settings import Settings
from canaryd.worker.scheduler import LocalScheduler

log = logging.getLogger(__name__)


class StageFloorMiddleware:
    """Makes the configured stage_duration floor visible to body validation (see domain/config.py)."""

    def __init__(self, app: ASGIApp, floor: int) -> None:
        self.app, self.floor = app, floor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = STAGE_DURATION_FLOOR.set(self.floor)
        try:
            await self.app(scope, receive, send)
        finally:
            STAGE_DURATION_FLOOR.reset(token)


async def reconcile_forever(rt: Runtime) -> None:
    """Re-enqueues overdue ticks, so a lost timer or queue loses no deployment."""
    while True:
        try:
            await reconcile(rt, grace_seconds=rt.settings.reconcile_interval)
        except Exception:
            log.exception("reconcile failed; trying again in %s s", rt.settings.reconcile_interval)
        await asyncio.sleep(rt.settings.reconcile_interval)


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


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings, "embedded" if settings.embedded else "api") as rt:
            app.state.runtime = rt
            background: asyncio.Task[None] | None = None
            if isinstance(rt.scheduler, LocalScheduler):
                rt.scheduler.bind(Engine(rt).tick)
                await reconcile(rt, grace_seconds=0)  # resume what a previous process left
                background = asyncio.create_task(reconcile_forever(rt))
            try:
                yield
            finally:
                if background is not None:
                    background.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await background

    app = FastAPI(
        title="canaryd",
        version=__version__,
        description="Canary deployments for applications on ordinary servers behind nginx, HAProxy or Traefik.",
        lifespan=lifespan,
    )
    app.include_router(routes.router)
    app.include_router(ws.router)
    app.include_router(traefik_provider.router)
    app.add_middleware(StageFloorMiddleware, floor=settings.min_stage_duration)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        detail: Any = _clean(exc.problems) if isinstance(exc, Invalid) else exc.message
        return JSONResponse({"detail": detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _clean(list(exc.errors()))}, status_code=422)

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

    @app.get("/healthz", tags=["operations"])
    async def healthz(request: Request) -> dict[str, str]:
        """200 when the database answers."""
        rt: Runtime = request.app.state.runtime
        async with rt.sessions() as session:
            await session.execute(text("SELECT 1"))
        return {"status": "ok", "mode": "embedded" if rt.settings.embedded else "production"}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics(request: Request) -> Response:
        """Prometheus text format (docs/operations.md lists every family)."""
        rt: Runtime = request.app.state.runtime
        async with rt.sessions() as session:
            repo = DeploymentRepository(session)
            rt.metrics.set_database_figures(await repo.count_by_status(), await repo.active_shares())
        return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.middleware("http")
    async def time_requests(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "unmatched"  # templates, not raw paths: bounded labels
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        if runtime is not None:
            runtime.metrics.api_request(
                request.method, template, response.status_code, time.perf_counter() - started
            )
        return response

    return app
