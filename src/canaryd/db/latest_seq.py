"""The newest event seq of each deployment, read at most once per `max_age` per process and shared by every
live stream of that process: their idle polls (each client every 5 s, services/live.py) then cost one query
per deployment and `max_age` instead of one per client — 500 idle subscribers made 100 reads a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd.db.repositories import EventRepository

#: How old a shared answer may be: a message the bus lost can reach a client this much later than its idle
#: poll alone would deliver it.
MAX_AGE_SECONDS = 1.0
#: Answers kept before the stale ones are dropped (one per deployment streamed recently).
MAX_KEPT = 1024


class LatestSeqs:
    """Coalesced reads of EventRepository.last_seq: concurrent and recent askers share one query."""

    def __init__(self, max_age: float = MAX_AGE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age, self.clock = max_age, clock
        self._answers: dict[int, tuple[float, asyncio.Future[int]]] = {}

    async def get(self, sessions: async_sessionmaker[AsyncSession], deployment_id: int) -> int:
        """The deployment's newest seq, as read at most `max_age` ago (or by a read still running)."""
        now = self.clock()
        kept = self._answers.get(deployment_id)
        if kept is None or now - kept[0] >= self.max_age or (kept[1].done() and kept[1].exception()):
            if len(self._answers) >= MAX_KEPT:
                self._answers = {d: a for d, a in self._answers.items() if now - a[0] < self.max_age}
            kept = (now, asyncio.ensure_future(self._read(sessions, deployment_id)))
            self._answers[deployment_id] = kept
        # shield: one asker's cancellation (its client went away) must not cancel the others' read
        return await asyncio.shield(kept[1])

    @staticmethod
    async def _read(sessions: async_sessionmaker[AsyncSession], deployment_id: int) -> int:
        async with sessions() as session:
            return await EventRepository(session).last_seq(deployment_id)
