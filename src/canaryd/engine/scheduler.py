"""Scheduling ticks: an in-process timer (embedded mode) or arq jobs on Redis (production mode).

Each scheduled tick has a token, stored on the deployment in the same transaction that decided it and used
as the arq `_job_id`. A token is never reused, so arq's refusal of a job id that is queued, deferred or has a
kept result (arq issues 167, 221, 432) can never block a tick; a tick whose token is no longer the
deployment's current one finds itself stale and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

TickHandler = Callable[[int, str], Awaitable[bool]]
"""Runs one tick; returns False when it could not start because another tick holds the lease."""

#: Seconds before a tick the database did not answer runs again (the API's Retry-After for the same cause).
DATABASE_RETRY_SECONDS = 2.0


class DatabaseUnavailableError(Exception):
    """The database did not answer a tick. The scheduler runs the same tick again after
    DATABASE_RETRY_SECONDS, so a database that is back resumes the rollout within that time instead of after
    the reconciler's lease + interval."""


class TickScheduler(Protocol):
    async def schedule(self, deployment_id: int, token: str, at: datetime) -> None: ...

    async def close(self) -> None: ...


class LocalScheduler:
    """asyncio timers inside `canaryd serve`. Lost on restart; the reconciler re-creates overdue ticks."""

    busy_retry_seconds = 0.5

    def __init__(self) -> None:
        self._handler: TickHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def bind(self, handler: TickHandler) -> None:
        self._handler = handler

    async def schedule(self, deployment_id: int, token: str, at: datetime) -> None:
        task = asyncio.create_task(self._run_at(deployment_id, token, at), name=f"tick-{deployment_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_at(self, deployment_id: int, token: str, at: datetime) -> None:
        assert self._handler is not None, "LocalScheduler.bind() was not called"
        delay = (at - datetime.now(UTC)).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            while True:
                try:
                    if await self._handler(deployment_id, token):
                        return
                except DatabaseUnavailableError as exc:
                    log.warning("%s; trying again in %.0f s", exc, DATABASE_RETRY_SECONDS)
                    await asyncio.sleep(DATABASE_RETRY_SECONDS)
                    continue
                await asyncio.sleep(self.busy_retry_seconds)
        except Exception:
            # The reconciler picks the deployment up again; a crash here must not kill the scheduler.
            log.exception("tick of deployment %s failed", deployment_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class ArqScheduler:
    """Enqueues `tick` jobs for arq workers, deferred to the tick's time."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def schedule(self, deployment_id: int, token: str, at: datetime) -> None:
        await self._pool.enqueue_job("tick", deployment_id, token, _job_id=token, _defer_until=at)

    async def close(self) -> None:
        await self._pool.aclose()
