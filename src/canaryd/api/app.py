"""The FastAPI application: built by a factory from the settings; clients made in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from canaryd import __version__
from canaryd.api import routes, traefik_provider, ws
from canaryd.db.repositories import DeploymentRepository
from canaryd.engine.scheduler import LocalScheduler
from canaryd.runtime import Runtime, open_runtime
from canaryd.services.deployments import stage_floor_problems
from canaryd.services.errors import Invalid, ServiceError
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


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings, "embedded" if settings.embedded else "api") as rt:
            app.state.runtime = rt
            background: asyncio.Task[None] | None = None
            if isinstance(rt.scheduler, LocalScheduler):
                rt.scheduler.bind(rt.driver().tick)
                await rt.reconcile(grace_seconds=0)  # resume what a previous process left
                background = asyncio.create_task(rt.reconcile_forever())
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

    @app.get("/healthz", tags=["operations"])
    async def healthz(request: Request) -> dict[str, str]:
        """200 when the database answers."""
        rt: Runtime = request.app.state.runtime
        async with rt.sessions() as session:
            await session.execute(text("SELECT 1"))
        return {"status": "ok", "mode": "embedded" if rt.settings.embedded else "production"}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics(request: Request) -> str:
        """Prometheus text format."""
        rt: Runtime = request.app.state.runtime
        async with rt.sessions() as session:
            counts = await DeploymentRepository(session).count_by_status()
        lines = ["# TYPE canaryd_deployments gauge"]
        lines += [
            f'canaryd_deployments{{canary_status="{state}"}} {n}' for state, n in sorted(counts.items())
        ]
        lines += rt.counters.render()
        return "\n".join(lines) + "\n"

    return app
