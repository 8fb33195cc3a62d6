"""Runs Alembic migrations programmatically (used by `canaryd migrate` and the tests)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.config import Config

#: The package directory: migrations/ ships inside it, so `canaryd migrate` works from a wheel install.
ROOT = Path(__file__).resolve().parents[1]


def _upgrade(database_url: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)


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
