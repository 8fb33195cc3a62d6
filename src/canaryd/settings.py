"""The one typed settings object, read from CANARYD_* environment variables once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CANARYD_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./canaryd.db"
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
    #: Largest request body and WebSocket message accepted, in bytes; larger ones get 413 (WebSocket: close
    #: 1009) before they are read in full.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
