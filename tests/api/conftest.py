"""Fixtures of the API tests: a whole canaryd whose stage_duration floor is the spec's default (60 s).

`tests.fixtures.stack.make_stack` always passes `min_stage_duration=1` to Settings (and passing it again
through `**extra` is a duplicate keyword), so this builds the same stack with the default floor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tests.fixtures.nginx import free_port, start_nginx
from tests.fixtures.stack import TOKEN, Stack, loopback_hosts, running_canaryd

from canaryd.settings import Settings


@pytest.fixture
async def spec_stack(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Stack]:
    """canaryd in embedded mode with the spec's stage_duration floor (60 s), nginx and five servers."""
    settings = Settings(
        database_url=sqlite_url,
        redis_url=None,
        bootstrap_token=TOKEN,
        min_stage_duration=60,
    )
    assert settings.min_stage_duration == 60
    nginx = start_nginx()
    stack: Stack | None = None
    try:
        async with running_canaryd(settings) as base:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=headers, timeout=30) as api:
                stack = Stack(base, api, nginx, loopback_hosts(5), free_port(), tmp_path, settings)
                yield stack
    finally:
        if stack is not None:
            await stack.stop_fleet()
        nginx.cleanup()
