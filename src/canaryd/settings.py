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
    #: A tick's lease; renewed every third of it while the tick works, so only a dead tick loses it and
    #: another worker takes over within lease_seconds + reconcile_interval (25 s with the defaults).
    lease_seconds: float = Field(default=15.0, ge=3)
    #: Cap of the backoff between retries of a step that failed for a transient reason.
    max_retry_backoff: float = Field(default=60.0, ge=0.1)
    health_check_timeout: float = 5.0
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
