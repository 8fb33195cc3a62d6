"""Mutual exclusion for the short transactions that change a deployment.

PostgreSQL takes a row lock (`SELECT ... FOR UPDATE`, in the repository). SQLite has no row locks, and
embedded mode runs in one process, so a process-local lock per deployment serialises writers there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from weakref import WeakValueDictionary


class DeploymentLocks:
    def __init__(self, process_local: bool) -> None:
        self._process_local = process_local
        self._locks: WeakValueDictionary[int, asyncio.Lock] = WeakValueDictionary()

    @asynccontextmanager
    async def hold(self, deployment_id: int) -> AsyncIterator[None]:
        if not self._process_local:
            yield
            return
        lock = self._locks.get(deployment_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[deployment_id] = lock
        async with lock:
            yield

    @asynccontextmanager
    async def hold_all(self, deployment_ids: Iterable[int]) -> AsyncIterator[None]:
        """hold() for several deployments, taken in id order (as PostgreSQL's row locks are)."""
        async with AsyncExitStack() as stack:
            for deployment_id in sorted(set(deployment_ids)):
                await stack.enter_async_context(self.hold(deployment_id))
            yield
