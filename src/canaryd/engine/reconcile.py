"""The reconciler: re-schedules active deployments whose next tick is overdue and that nobody holds, so a
lost timer, a lost queue or a dead worker loses no deployment."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd.db.engine import unit_of_work
from canaryd.db.repositories import DeploymentRepository
from canaryd.engine.locks import DeploymentLocks
from canaryd.engine.ports import Clock
from canaryd.engine.scheduler import TickScheduler
from canaryd.engine.store import new_token


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    locks: DeploymentLocks,
    scheduler: TickScheduler,
    clock: Clock,
    grace_seconds: float,
) -> int:
    """Re-schedules every active deployment whose next tick is more than `grace_seconds` overdue and whose
    lease has expired; returns how many."""
    now = clock.now()
    cutoff = now - timedelta(seconds=grace_seconds)
    async with sessions() as session:
        overdue = [d.id for d in await DeploymentRepository(session).overdue(cutoff, now)]
    scheduled = 0
    for deployment_id in overdue:
        async with locks.hold(deployment_id), unit_of_work(sessions) as session:
            dep = await DeploymentRepository(session).get(deployment_id, for_update=True)
            if dep is None or dep.next_tick_at is None or dep.next_tick_at >= cutoff:
                continue
            if dep.lease_until is not None and dep.lease_until >= now:
                continue
            dep.tick_token, dep.next_tick_at = new_token(dep.id), now
            token = dep.tick_token
        await scheduler.schedule(deployment_id, token, now)
        scheduled += 1
    return scheduled


__all__ = ["reconcile"]
