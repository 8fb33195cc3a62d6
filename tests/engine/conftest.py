"""Copies of the session's migrated SQLite file (tests/conftest.py's sqlite_template) for the engine tests,
in memory: milliseconds, not the half second a migration takes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def new_db(sqlite_template: Path) -> Iterator[Callable[[], str]]:
    """Makes fresh copies of the migrated template, in memory-backed /dev/shm where there is one (SQLite's
    fsync per commit is most of a tick's cost on disk); removed after the test."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="canaryd-engine-", dir=shm if shm.is_dir() else None))
    made = iter(range(10**6))

    def make() -> str:
        path = folder / f"canaryd-{next(made)}.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"

    yield make
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def db_url(new_db: Callable[[], str]) -> str:
    """A fresh copy of the migrated template for one test."""
    return new_db()
