"""The production tick queue on a real Redis: due ticks are popped in batches, each by exactly one worker,
and a tick scheduled again under its token moves rather than doubles."""

from __future__ import annotations

import asyncio
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
