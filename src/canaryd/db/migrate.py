"""Runs Alembic migrations programmatically (used by `canaryd migrate` and the tests), and tells the other
commands whether the schema is there before they touch the database."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from canaryd.db.engine import make_engine

#: The package directory: migrations/ ships inside it, so `canaryd migrate` works from a wheel install.
ROOT = Path(__file__).resolve().parents[1]


def _config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


def head_revision() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(_config("")).get_current_head()


def _sqlite_file(database_url: str) -> Path | None:
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.partition(":///")[2].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _upgrade(database_url: str, revision: str) -> None:
    sqlite = _sqlite_file(database_url)
    if sqlite is not None:
        sqlite.parent.mkdir(parents=True, exist_ok=True)
    # Alembic logs "Running upgrade" at INFO; `canaryd migrate` says what happened itself, once.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    command.upgrade(_config(database_url), revision)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrades the schema. Alembic's env.py runs its own event loop, so inside a running loop the
    migration runs on a helper thread (blocking the caller until done)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _upgrade(database_url, revision)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(_upgrade, database_url, revision).result()


async def current_revision(database_url: str) -> str | None:
    """The revision the database is at; None when it has no schema (a missing SQLite file is not created)."""
    sqlite = _sqlite_file(database_url)
    if sqlite is not None and not sqlite.exists():
        return None

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(read)
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str | None

    @property
    def ready(self) -> bool:
        return self.current is not None and self.current == self.head

    def problem(self, where: str) -> str | None:
        """One line for the operator when the schema is missing or old, else None."""
        if self.current is None:
            return f"no canaryd schema in {where}; run `canaryd migrate` first"
        if self.current != self.head:
            return (
                f"the database {where} is at schema {self.current}, this canaryd needs {self.head}; "
                "run `canaryd migrate`"
            )
        return None


async def schema_status(database_url: str) -> SchemaStatus:
    return SchemaStatus(await current_revision(database_url), head_revision())
