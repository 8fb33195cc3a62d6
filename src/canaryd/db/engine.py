"""Engine and session factory, made once at start-up from the settings and passed down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from canaryd.db.jsontext import column_text, parse

_T = TypeVar("_T")


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
    engine = create_async_engine(
        database_url, pool_size=10, max_overflow=10, json_serializer=column_text, json_deserializer=parse
    )

    @event.listens_for(engine.sync_engine, "checkout")
    def _drop_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # Instead of pool_pre_ping, whose ping on asyncpg is three round trips (BEGIN, ";", ROLLBACK) and
        # cost more than a status read's SELECT: asyncpg notices a connection the server closed (a restart,
        # pg_terminate_backend) as soon as the event loop reads the EOF, with no round trip. The pool then
        # replaces it. A connection that dies unnoticed fails its statement: `read` below retries once.
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the database closed this connection")

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads that change nothing: on PostgreSQL in autocommit, so that a status read is its
    SELECT, without BEGIN and COMMIT round trips (each statement sees what was committed when it began,
    as in the default READ COMMITTED transaction); on SQLite the ordinary sessions."""
    if engine.dialect.name != "postgresql":
        return make_sessionmaker(engine)
    return async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


async def read(
    sessions: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[_T]]
) -> _T:
    """Runs a read that changes nothing; once more on a fresh connection if the connection turned out to
    be dead (the pool checks a connection's state at check-out, not with a round trip: see make_engine)."""
    try:
        async with sessions() as session:
            return await work(session)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    async with sessions() as session:
        return await work(session)


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
