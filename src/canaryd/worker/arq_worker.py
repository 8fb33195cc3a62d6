"""`canaryd worker`: arq worker running ticks from Redis, plus the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import Worker

from canaryd.api.app import reconcile_forever
from canaryd.engine.tick import Engine
from canaryd.runtime import open_runtime
from canaryd.settings import Settings

#: A busy deployment (another tick holds its lease) is retried this often.
BUSY_RETRY_SECONDS = 0.5


async def tick(ctx: dict[str, Any], deployment_id: int, token: str) -> None:
    engine: Engine = ctx["engine"]
    if not await engine.tick(deployment_id, token):
        raise Retry(defer=BUSY_RETRY_SECONDS)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    stack = contextlib.AsyncExitStack()
    rt = await stack.enter_async_context(open_runtime(settings, "worker"))
    ctx["stack"], ctx["engine"] = stack, Engine(rt)
    ctx["reconciler"] = asyncio.create_task(reconcile_forever(rt))


async def shutdown(ctx: dict[str, Any]) -> None:
    reconciler: asyncio.Task[None] | None = ctx.get("reconciler")
    if reconciler is not None:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
    stack: contextlib.AsyncExitStack | None = ctx.get("stack")
    if stack is not None:
        await stack.aclose()


def make_worker(settings: Settings, *, burst: bool = False) -> Worker:
    assert settings.redis_url, "canaryd worker needs CANARYD_REDIS_URL"
    return Worker(
        functions=[tick],
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={"settings": settings},
        max_jobs=20,
        job_timeout=3600,
        max_tries=100_000,  # busy retries count as tries; a tick itself never raises
        keep_result=0,
        burst=burst,
        handle_signals=True,
    )
