"""Overrides `database_url` of tests/conftest.py for these tests.

The shared fixture is an async generator that calls `request.getfixturevalue("sqlite_url")` (itself async)
from inside the running event loop; with pytest-asyncio 1.x that raises "Runner.run() cannot be called from
a running event loop" at setup. A synchronous fixture may ask for async fixtures: they are set up outside it.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database of each kind canaryd supports."""
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url
