"""Runs Alembic migrations programmatically (used by `canaryd migrate` and the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[3]


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrades the schema; synchronous (Alembic's env.py runs its own event loop)."""
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)
