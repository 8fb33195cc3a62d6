"""Scheduling ticks: an in-process timer (embedded mode) or a Redis sorted set (production mode).

Each scheduled tick has a token, stored on the deployment in the same transaction that decided it and used
as the tick's member of the sorted set (score: when it is due). A token is never reused, so a tick whose
token is no longer the deployment's current one finds itself stale and does nothing.

Workers pop due ticks in batches with one Lua script (ZRANGEBYSCORE + ZREM, atomic on the Redis server, so
two workers never get the same tick). A tick popped by a worker that then dies is gone from Redis; the
reconciler re-schedules it from the database's `next_tick_at` once its lease has expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from redis.asyncio import Redis

from canaryd.engine.batch import Batcher

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


#: The sorted set of scheduled ticks: member = token, score = when it is due (Unix seconds).
TICKS_KEY = "canaryd:ticks"

#: What an idle worker waits on between looks at the queue (BLPOP): scheduling a tick that is due at once (an
#: operator's action, a new deployment) pushes an entry, so one idle worker starts it within a round trip
#: instead of at its next look (POLL_DELAY_SECONDS of worker/tick_worker.py later, 50 ms on average).
WAKE_KEY = "canaryd:ticks:wake"
#: Entries kept on the wake list while no worker waits: each one only makes a worker look once more.
WAKE_KEEP = 16

#: Pops at most ARGV[2] members due by ARGV[1] (ties in token order), atomically.
POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


def deployment_of(token: str) -> int:
    """The deployment a tick token belongs to (tokens are `tick:<deployment id>:<random>`)."""
    return int(token.split(":", 2)[1])


class RedisScheduler:
    """Ticks in a Redis sorted set, popped by `canaryd worker`s in batches (worker/tick_worker.py)."""

    def __init__(self, redis: Redis, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock
        self._pop = redis.register_script(POP_DUE)
        #: Ticks scheduled together (a batch of ticks' next ones) go in one ZADD.
        self._adds: Batcher[tuple[str, float], None] = Batcher(self._schedule_many, 500)

    async def schedule(self, deployment_id: int, token: str, at: datetime) -> None:
        await self._adds.submit((token, at.timestamp()))

    async def _schedule_many(self, ticks: Sequence[tuple[str, float]]) -> list[None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(TICKS_KEY, dict(ticks))
            if min(at for _, at in ticks) <= self._clock():  # due now: wake an idle worker
                pipe.rpush(WAKE_KEY, 1)
                pipe.ltrim(WAKE_KEY, -WAKE_KEEP, -1)
            await pipe.execute()
        return [None] * len(ticks)

    async def wait_for_due(self, seconds: float) -> None:
        """Returns after `seconds`, or as soon as a tick is scheduled for now (by any process)."""
        # BLPOP takes a fractional timeout since Redis 6; redis-py's typing says whole seconds.
        await self._redis.execute_command("BLPOP", WAKE_KEY, seconds)  # type: ignore[no-untyped-call]

    async def pop_due(self, now: datetime, limit: int) -> list[str]:
        """Takes up to `limit` ticks due by `now` off the queue (no other worker gets them)."""
        popped = await self._pop(keys=[TICKS_KEY], args=[now.timestamp(), limit])
        return [t.decode() if isinstance(t, bytes) else str(t) for t in popped]

    async def close(self) -> None:
        await self._redis.aclose()
