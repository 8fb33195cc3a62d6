"""The one typed settings object, read from CANARYD_* environment variables once at start-up.

Every variable, its default and its meaning is listed in README.md ("Environment variables").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """/var/lib/canaryd for root (systemd's StateDirectory), else $XDG_DATA_HOME/canaryd
    (~/.local/share/canaryd): never the working directory, so every command finds the same database."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/canaryd")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "canaryd"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CANARYD_", extra="ignore")

    #: Where the default SQLite database lives (embedded mode).
    data_dir: Path = Field(default_factory=default_data_dir)
    #: Empty = SQLite at <data_dir>/canaryd.db.
    database_url: str = ""
    #: Unset = embedded mode (in-process scheduler and event bus); set = arq workers and Redis pub/sub.
    redis_url: str | None = None
    bootstrap_token: str | None = None
    #: The spec's floor for stage_duration; lower it only for tests and demos.
    min_stage_duration: int = Field(default=60, ge=1)
    ssh_known_hosts: str | None = None
    ssh_client_keys: list[str] = Field(default_factory=list)
    ssh_connect_timeout: float = 10.0
    #: How often the reconciler looks for active deployments whose next tick is overdue.
    reconcile_interval: float = 10.0
    #: A tick that has not finished within this many seconds is presumed dead and its lease taken over.
    lease_seconds: float = 300.0
    health_check_timeout: float = 5.0
    command_timeout: float = 300.0
    log_level: str = "INFO"
    #: "text" (one readable line per record) or "json" (one JSON object per line).
    log_format: Literal["text", "json"] = "text"
    #: A `canaryd worker` serves its own /metrics on this port when set (the API's /metrics has no
    #: engine figures in production mode, where workers run the ticks).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'canaryd.db'}"
        return self

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file of database_url (None for other databases or in-memory SQLite)."""
        if not self.is_sqlite:
            return None
        _, _, path = self.database_url.partition(":///")
        path = path.split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
