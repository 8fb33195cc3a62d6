"""The newest event seq shared by a process's live streams (db/latest_seq.py), on a real database: askers
at the same time share one query, an answer is reused for at most its age, a new event shows after it,
and one asker's cancellation does not cancel the others' read."""

from __future__ import annotations

import asyncio

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd.db.engine import unit_of_work
from canaryd.db.latest_seq import LatestSeqs
from canaryd.db.models import DeploymentEvent
from canaryd.db.repositories import EventRepository

from .test_repositories import NOW, add_app, deployment


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_askers_share_reads_for_at_most_max_age(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with unit_of_work(sessions) as session:
        dep = deployment((await add_app(session, "shop")).id)
        session.add(dep)
        await session.flush()
        dep_id = dep.id
        await EventRepository(session).append(DeploymentEvent(deployment_id=dep_id, kind="created", at=NOW))
    queries: list[str] = []
    engine = sessions.kw["bind"]
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda *a: queries.append(a[2]) if "max(deployment_events.seq)" in a[2] else None,
    )
    clock = Clock()
    latest = LatestSeqs(max_age=1.0, clock=clock)

    assert await asyncio.gather(*(latest.get(sessions, dep_id) for _ in range(50))) == [1] * 50
    assert len(queries) == 1, queries  # fifty streams polling at once: one query

    async with unit_of_work(sessions) as session:
        await EventRepository(session).append(DeploymentEvent(deployment_id=dep_id, kind="paused", at=NOW))
    queries.clear()
    clock.now = 0.9
    assert await latest.get(sessions, dep_id) == 1, "an answer younger than max_age is reused"
    assert queries == []
    clock.now = 1.0
    assert await latest.get(sessions, dep_id) == 2, "an answer max_age old is read again"
    assert len(queries) == 1
    assert await latest.get(sessions, dep_id + 1) == 0, "a deployment without events"

    # A client that goes away while the shared read runs cancels only its own wait.
    clock.now = 5.0
    first = asyncio.create_task(latest.get(sessions, dep_id))
    second = asyncio.create_task(latest.get(sessions, dep_id))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == 2
