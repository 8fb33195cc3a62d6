"""`canaryd worker`: arq worker running ticks from Redis, plus the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import Worker
from prometheus_client import start_http_server
from redis.exceptions import RedisError

from canaryd.engine.driver import RolloutDriver
from canaryd.engine.scheduler import DATABASE_RETRY_SECONDS, DatabaseUnavailableError
from canaryd.runtime import open_runtime
from canaryd.settings import Settings

log = logging.getLogger(__name__)

#: A busy deployment (another tick holds its lease) is retried this often.
BUSY_RETRY_SECONDS = 0.5
#: How often a worker looks for due ticks: the floor of tick lag (arq's default, 0.5 s, made the median
#: tick start ~0.3 s late). Each look is one ZRANGEBYSCORE on Redis.
POLL_DELAY_SECONDS = 0.1
#: Longest wait between attempts to get a worker going again after Redis was lost.
MAX_REDIS_BACKOFF_SECONDS = 30.0


async def tick(ctx: dict[str, Any], deployment_id: int, token: str) -> None:
    driver: RolloutDriver = ctx["driver"]
    try:
        if await driver.tick(deployment_id, token):
            return
    except DatabaseUnavailableError as exc:
        log.warning("%s; trying again in %.0f s", exc, DATABASE_RETRY_SECONDS)
        raise Retry(defer=DATABASE_RETRY_SECONDS) from exc
    raise Retry(defer=BUSY_RETRY_SECONDS)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    stack = contextlib.AsyncExitStack()
    rt = await stack.enter_async_context(open_runtime(settings, "worker"))
    ctx["stack"], ctx["driver"] = stack, rt.driver()
    if settings.worker_metrics_port is not None:  # the worker's own /metrics (ticks, judge, proxies)
        server, _ = start_http_server(
            settings.worker_metrics_port, settings.worker_metrics_host, registry=rt.metrics.registry
        )
        stack.callback(server.server_close)  # callbacks run last-first: shutdown(), then close
        stack.callback(server.shutdown)
    ctx["reconciler"] = asyncio.create_task(rt.reconcile_forever())
    ctx["outbox"] = asyncio.create_task(rt.outbox().run_forever())


async def shutdown(ctx: dict[str, Any]) -> None:
    for name in ("reconciler", "outbox"):
        task: asyncio.Task[None] | None = ctx.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        poll_delay=POLL_DELAY_SECONDS,
        job_timeout=3600,
        max_tries=100_000,  # busy retries count as tries; a tick itself never raises
        keep_result=0,
        burst=burst,
        handle_signals=True,
    )


async def run_worker(settings: Settings) -> None:
    """Runs a worker until a signal stops it. Losing Redis restarts the worker (with backoff), not the
    process: arq's own loop gives up on the first connection error, and a worker that exits would leave
    deployments waiting for a supervisor. Jobs lost with Redis are re-enqueued by the reconciler."""
    delay = 1.0
    while True:
        worker = make_worker(settings)
        started = time.monotonic()
        try:
            await worker.async_run()
            return
        except asyncio.CancelledError:  # stopped by SIGINT/SIGTERM (arq cancels its main task)
            await worker.close()
            return
        except (RedisError, OSError) as exc:
            log.warning("lost Redis (%s); starting the worker again in %g s", exc, delay)
        # Ticks in flight need the database, not Redis: let them finish before their runtime is closed
        # (arq's close() stops at the first failed job and would close it under them).
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await shutdown(worker.ctx)
        redis = worker.ctx.get("redis")
        if redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await redis.aclose()
        delay = 1.0 if time.monotonic() - started > MAX_REDIS_BACKOFF_SECONDS else delay
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_REDIS_BACKOFF_SECONDS)
