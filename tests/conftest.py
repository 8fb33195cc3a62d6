"""Shared fixtures: real PostgreSQL and SQLite databases, real nginx/sshd/app instances, a running canaryd.

Nothing here is mocked. PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) must be running
(`scripts/test.sh` starts them); a missing one fails the test with a message saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd.db.engine import make_engine, make_sessionmaker
from canaryd.db.migrate import upgrade

pytest_plugins = [
    "tests.fixtures.nginx",
    "tests.fixtures.haproxy",
    "tests.fixtures.traefik",
    "tests.fixtures.apps",
    "tests.fixtures.sshd",
    "tests.fixtures.stack",
    "tests.fixtures.prometheus",
    "tests.scheduling",
]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keeps the call phase's report on the item (`item.report_call`): fixtures print diagnostics on
    teardown only when the test failed."""
    report = yield
    if call.when == "call":
        item.report_call = report  # type: ignore[attr-defined]
    return report


PG_ADMIN = ("-h", "127.0.0.1", "-U", "postgres")
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
#: Developers running several suites at once give each its own redis-server with CANARYD_TEST_REDIS_PORT.
REDIS = ("127.0.0.1", int(os.environ.get("CANARYD_TEST_REDIS_PORT", "6379")))


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", *PG_ADMIN[:2], "-p", "5432"], capture_output=True).returncode == 0


def redis_ready() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database used as the template of each test's own database."""
    if not _pg_ready():
        pytest.fail(
            "PostgreSQL is not answering on 127.0.0.1:5432 (scripts/test.sh starts it)", pytrace=False
        )
    name = f"canaryd_tpl_{os.getpid()}"
    subprocess.run(["dropdb", *PG_ADMIN, "--if-exists", name], check=True, capture_output=True)
    subprocess.run(["createdb", *PG_ADMIN, name], check=True, capture_output=True)
    upgrade(PG_URL.format(db=name))
    yield name
    subprocess.run(["dropdb", *PG_ADMIN, "--if-exists", "--force", name], capture_output=True)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    name = f"canaryd_t_{uuid.uuid4().hex[:12]}"
    subprocess.run(["createdb", *PG_ADMIN, "-T", pg_template, name], check=True, capture_output=True)
    yield PG_URL.format(db=name)
    subprocess.run(["dropdb", *PG_ADMIN, "--if-exists", "--force", name], capture_output=True)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file that each test's own database is copied from (migrating costs ~0.15 s
    of CPU, a copy next to nothing; as pg_template for PostgreSQL)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "canaryd.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh, migrated SQLite database file for one test."""
    path = tmp_path / "canaryd.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on both databases canaryd supports."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def redis_url() -> str:
    """A Redis database for one test (flushed first)."""
    if not redis_ready():
        pytest.fail("Redis is not answering on 127.0.0.1:6379 (scripts/test.sh starts it)", pytrace=False)
    # One database per pytest-xdist worker (gw0, gw1, …), so that no worker flushes another's queue.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    db = 1 + (int(worker) if worker.isdigit() else os.getpid()) % 14
    subprocess.run(
        ["redis-cli", "-p", str(REDIS[1]), "-n", str(db), "FLUSHDB"], check=True, capture_output=True
    )
    return f"redis://127.0.0.1:{REDIS[1]}/{db}"


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on a fresh, migrated database (sqlite or postgresql)."""
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()
