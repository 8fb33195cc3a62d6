"""Engine and session factory, made once at start-up from the settings and passed down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from canaryd.db.jsontext import column_text, parse


def make_engine(database_url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys and a generous busy timeout."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(database_url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The driver's own transaction handling skips BEGIN before SAVEPOINT, which makes RELEASE
            # commit; SQLAlchemy's documented fix is to let it issue BEGIN itself (see "begin" below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # IMMEDIATE takes the write lock up front: a deferred transaction that read first and writes
            # later fails at once with "database is locked" when another writer committed in between.
            # Embedded mode is one process with short transactions, so serialising them costs little.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # orjson for the JSON columns (db/jsontext.py): PostgreSQL only, where the values it refuses (NaN) could
    # not be stored anyway; an embedded SQLite database keeps the standard library's text.
    return create_async_engine(
        database_url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        json_serializer=column_text,
        json_deserializer=parse,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads that change nothing: on PostgreSQL in autocommit, so that a status read is its
    SELECT, without BEGIN and COMMIT round trips (each statement sees what was committed when it began,
    as in the default READ COMMITTED transaction); on SQLite the ordinary sessions."""
    if engine.dialect.name != "postgresql":
        return make_sessionmaker(engine)
    return async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


@asynccontextmanager
async def unit_of_work(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction: commits when the block succeeds, rolls back when it raises. The only commit point."""
    async with sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
