"""From an operator's action to its tick starting, in production mode: how long a tick scheduled for now
waits on the Redis tick queue before an idle worker pops it.

    CANARYD_BENCH_REDIS=redis://127.0.0.1:6379/15 .venv/bin/python bench/tick_pickup.py [--trials 200]

A worker between looks either sleeps POLL_DELAY_SECONDS (canaryd before the wake list) or waits on the wake
list (RedisScheduler.wait_for_due, now). Both run canaryd's own RedisScheduler and the worker's constant on a
real Redis (database CANARYD_BENCH_REDIS, flushed), side by side: trials alternate between the two ways, each
trial scheduling one tick for now at a random moment of the worker's wait (bounded: at most 1,000 trials,
everything on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from datetime import UTC, datetime

from redis.asyncio import Redis

from canaryd.engine.scheduler import WAKE_KEY, RedisScheduler
from canaryd.worker.tick_worker import POLL_DELAY_SECONDS


async def pickup_ms(queue: RedisScheduler, actor: RedisScheduler, woken: bool, n: int) -> float:
    """One trial: an idle worker loop; a tick scheduled for now at a random moment; ms until it is popped."""
    token = f"tick:{n}:bench"
    scheduled_at = 0.0

    async def act() -> None:
        nonlocal scheduled_at
        await asyncio.sleep(random.uniform(0.0, 2 * POLL_DELAY_SECONDS))
        scheduled_at = time.perf_counter()
        await actor.schedule(n, token, datetime.now(UTC))

    acting = asyncio.create_task(act())
    while True:
        popped = await queue.pop_due(datetime.now(UTC), 100)
        if token in popped:
            await acting
            return (time.perf_counter() - scheduled_at) * 1000
        if woken:
            await queue.wait_for_due(POLL_DELAY_SECONDS)
        else:
            await asyncio.sleep(POLL_DELAY_SECONDS)


def line(name: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"{name:<34} p50 {statistics.median(values):7.1f}  p99 {q[98]:7.1f}  max {max(values):7.1f}"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    trials = min(ap.parse_args().trials, 1000)
    url = os.environ.get("CANARYD_BENCH_REDIS", "redis://127.0.0.1:6379/15")
    redis = Redis.from_url(url)
    await redis.flushdb()
    queue, actor = RedisScheduler(redis), RedisScheduler(Redis.from_url(url))
    results: dict[bool, list[float]] = {False: [], True: []}
    try:
        for n in range(trials):
            woken = n % 2 == 1
            results[woken].append(await pickup_ms(queue, actor, woken, n))
            await redis.delete(WAKE_KEY)  # each trial starts with no wake entry left over
    finally:
        await queue.close()
        await actor.close()
    print(f"tick scheduled for now -> popped by an idle worker, ms ({trials} trials, Redis {url})")
    print(line(f"sleep {POLL_DELAY_SECONDS * 1000:.0f} ms between looks (before)", results[False]))
    print(line("wait on the wake list (now)", results[True]))


if __name__ == "__main__":
    asyncio.run(main())
