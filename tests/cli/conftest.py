"""A smaller fleet for canaryctl's live tests: three servers (one canary), so promotions are quick."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.fixtures.stack import Stack, make_stack


@pytest.fixture
async def small_stack(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Stack]:
    async with make_stack(tmp_path, sqlite_url, servers=3) as stack:
        yield stack
