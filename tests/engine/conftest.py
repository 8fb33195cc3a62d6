"""A migrated SQLite file made once per session and copied for each engine test (milliseconds, not the
half second a migration takes)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from canaryd.db.migrate import upgrade


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("engine-template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


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
