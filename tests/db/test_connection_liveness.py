"""Pooled PostgreSQL connections are checked without a round trip: one the server closed is replaced at
check-out, and a read that meets a dead connection anyway runs once more on a fresh one."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.db.engine import make_engine, make_read_sessionmaker, read


async def _backend_pid(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_the_server_closed_is_replaced_at_checkout(pg_url: str) -> None:
    """After pg_terminate_backend of the pooled connection, the next read gets a new one and succeeds."""
    engine, admin = make_engine(pg_url), make_engine(pg_url)
    sessions = make_read_sessionmaker(engine)
    try:
        first = await read(sessions, _backend_pid)
        async with admin.connect() as other:  # another pool: not the connection it terminates
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        await asyncio.sleep(0.2)  # the pooled connection's EOF arrives
        attempts = 0

        async def counted(session: AsyncSession) -> int:
            nonlocal attempts
            attempts += 1
            return await _backend_pid(session)

        second = await read(sessions, counted)
        assert second != first
        assert attempts == 1, "the closed connection was checked out (and the read retried)"
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_a_read_that_meets_a_dead_connection_runs_once_more(pg_url: str) -> None:
    """A connection that dies under a read (its backend terminated mid-read) costs a retry, not an error."""
    engine = make_engine(pg_url)
    sessions = make_read_sessionmaker(engine)
    attempts: list[int] = []

    async def dies_the_first_time(session: AsyncSession) -> int:
        pid = await _backend_pid(session)
        attempts.append(pid)
        if len(attempts) == 1:
            await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return pid

    try:
        assert await read(sessions, dies_the_first_time) == attempts[1]
        assert len(attempts) == 2 and attempts[0] != attempts[1]
    finally:
        await engine.dispose()
