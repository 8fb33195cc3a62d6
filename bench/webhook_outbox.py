"""What the notification outbox costs and how fast it empties.

    .venv/bin/python bench/webhook_outbox.py                       # SQLite in a temp dir, 200 events
    .venv/bin/python bench/webhook_outbox.py --events 500 --database-url postgresql+asyncpg://…/db

1. The cost of writing an event: one transaction that appends an event and enqueues its deliveries (what
   every tick's commit does), timed with 0 and with 3 subscriptions.
2. Delivery: the events of one deployment to 3 real loopback receivers (tests/fixtures/receiver.py) by one
   outbox with the default settings but a 0.05 s poll: deliveries per second, and the time from an event's
   commit to the receiver getting it, once everything was enqueued at once (a backlog) and once with events
   written one every 50 ms (live).

Prints medians and p90s. The database URL must point at a migrated, empty database (SQLite: made here).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.fixtures

from tests.fixtures.events import record
from tests.fixtures.receiver import Receiver, receiver

from canaryd.db.engine import make_engine, make_sessionmaker, unit_of_work
from canaryd.db.migrate import upgrade
from canaryd.db.models import Webhook
from canaryd.engine.outbox import DeliveryTerms, Outbox
from canaryd.engine.ports import SystemClock
from canaryd.observability import Metrics


def q(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


async def write_event(sessions: async_sessionmaker[AsyncSession], dep_id: int) -> float:
    """One event transaction as the engine writes it; returns its duration in ms."""
    started = time.perf_counter()
    await record(sessions, ["stage_advanced"], dep_id)
    return (time.perf_counter() - started) * 1000


async def main(events: int, database_url: str | None) -> None:
    if database_url is None:
        folder = tempfile.mkdtemp(prefix="canaryd-bench-")
        database_url = f"sqlite+aiosqlite:///{folder}/bench.db"
        upgrade(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    terms = DeliveryTerms(
        timeout=5, max_attempts=12, backoff=2, backoff_max=600, poll_interval=0.05, retention_days=30
    )
    try:
        dep = await record(sessions, [])
        bare = [await write_event(sessions, dep) for _ in range(events)]
        async with receiver() as a, receiver() as b, receiver() as c, httpx.AsyncClient() as http:
            async with unit_of_work(sessions) as s:
                for r in (a, b, c):
                    s.add(Webhook(url=r.url, events=["*"], format="json", description="", created_by="bench"))
            dep = await record(sessions, [])
            subscribed = [await write_event(sessions, dep) for _ in range(events)]
            print(f"{database_url.split(':')[0]}: event transaction, median / p90 ms")
            print(f"  0 subscriptions: {statistics.median(bare):.2f} / {q(bare, 0.9):.2f}")
            print(f"  3 subscriptions: {statistics.median(subscribed):.2f} / {q(subscribed, 0.9):.2f}")
            outbox = Outbox(sessions, http, SystemClock(), Metrics(), terms, "bench")
            started = time.perf_counter()
            task = asyncio.create_task(outbox.run_forever())
            for r in (a, b, c):
                await wait_all(r, events)
            took = time.perf_counter() - started
            print(
                f"  backlog of {3 * events} deliveries (3 subscriptions): {3 * events / took:.0f} per second"
            )
            before = {id(r): len(r.requests) for r in (a, b, c)}
            dep = await record(sessions, [])
            commit_at = []
            for _ in range(min(events, 100)):
                commit_at.append(time.time())
                await write_event(sessions, dep)
                await asyncio.sleep(0.05)
            for r in (a, b, c):
                await wait_all(r, events + min(events, 100))
            task.cancel()
            live = [
                (got.wall - commit) * 1000
                for r in (a, b, c)
                for got, commit in zip(r.requests[before[id(r)] :], commit_at, strict=False)
            ]
            print(
                f"  live, one event every 50 ms: commit → receiver median {statistics.median(live):.0f} ms, "
                f"p90 {q(live, 0.9):.0f} ms (poll 0.05 s)"
            )
    finally:
        await engine.dispose()


async def wait_all(r: Receiver, count: int) -> None:
    while len(r.delivered()) < count:
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.database_url))
