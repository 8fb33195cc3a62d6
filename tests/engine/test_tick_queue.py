"""The production tick queue on a real Redis: due ticks are popped in batches, each by exactly one worker,
a tick scheduled again under its token moves rather than doubles, and a tick due at once wakes an idle
worker."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from canaryd.engine.scheduler import RedisScheduler, deployment_of

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


async def test_concurrent_poppers_share_the_due_ticks_without_overlap(redis_url: str) -> None:
    queues = [RedisScheduler(Redis.from_url(redis_url)) for _ in range(3)]
    try:
        for n in range(1, 301):
            await queues[0].schedule(n, f"tick:{n}:a", NOW - timedelta(seconds=n % 7))
        for n in range(301, 311):  # not due yet
            await queues[0].schedule(n, f"tick:{n}:a", NOW + timedelta(seconds=1))
        await queues[0].schedule(5, "tick:5:a", NOW + timedelta(seconds=1))  # moved later: one entry

        async def drain(queue: RedisScheduler) -> list[str]:
            got: list[str] = []
            while batch := await queue.pop_due(NOW, 7):
                assert len(batch) <= 7
                got += batch
            return got

        popped = await asyncio.gather(*(drain(q) for q in queues))
        everything = [t for got in popped for t in got]
        assert len(everything) == len(set(everything)) == 299
        assert {deployment_of(t) for t in everything} == set(range(1, 301)) - {5}
        later = await queues[1].pop_due(NOW + timedelta(seconds=1), 100)
        assert sorted(deployment_of(t) for t in later) == [5, *range(301, 311)]
    finally:
        for q in queues:
            await q.close()


async def test_a_tick_due_now_wakes_a_waiting_worker_and_a_later_one_does_not(redis_url: str) -> None:
    """An operator's action schedules a tick for now: a worker waiting between looks returns within a round
    trip, not at the end of its wait; a tick due later leaves it waiting."""
    waiting, scheduling = RedisScheduler(Redis.from_url(redis_url)), RedisScheduler(Redis.from_url(redis_url))
    try:
        started = time.monotonic()
        wait = asyncio.create_task(waiting.wait_for_due(1.0))
        await asyncio.sleep(0.2)
        await scheduling.schedule(1, "tick:1:a", datetime.now(UTC) + timedelta(seconds=30))
        await asyncio.sleep(0.2)
        assert not wait.done(), "a tick due in 30 s woke the worker"
        await scheduling.schedule(2, "tick:2:a", datetime.now(UTC))
        await asyncio.wait_for(wait, 0.5)
        woke_after = time.monotonic() - started
        assert woke_after < 0.9, woke_after
        assert await waiting.pop_due(datetime.now(UTC), 10) == ["tick:2:a"]
        # Nothing left to wake anyone: the next wait lasts its whole time.
        started = time.monotonic()
        await waiting.wait_for_due(0.3)
        assert time.monotonic() - started >= 0.25
    finally:
        await waiting.close()
        await scheduling.close()
