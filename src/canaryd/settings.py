"""The one typed settings object, read from CANARYD_* environment variables once at start-up.

Every variable, its default and its meaning is listed in README.md ("Environment variables").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
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
    # hide_input_in_errors: a refused setting may be a secret (a token, a URL with a password); never echo it.
    model_config = SettingsConfigDict(env_prefix="CANARYD_", extra="ignore", hide_input_in_errors=True)

    #: Where the default SQLite database lives (embedded mode).
    data_dir: Path = Field(default_factory=default_data_dir)
    #: Empty = SQLite at <data_dir>/canaryd.db.
    database_url: str = ""
    #: Unset = embedded mode (in-process scheduler and event bus); set = workers popping ticks from Redis, and Redis pub/sub.
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
    #: How long an API process believes a token it looked up; a revoked token is refused by every replica
    #: within this many seconds (by the one that revoked it at once). 0 looks every request's token up.
    token_cache_seconds: float = Field(default=2.0, ge=0, le=60)
    #: Processes `canaryd serve` runs the API in (production mode only: embedded mode's scheduler and event
    #: bus live in its one process). Each has its own database pool, token cache and Redis subscription, and
    #: sends live events to its own WebSockets; the kernel spreads connections over them. /metrics answers
    #: from whichever process takes the scrape: its request figures are that process's own.
    api_workers: int = Field(default=1, ge=1, le=64)
    #: "text" (one readable line per record) or "json" (one JSON object per line).
    log_format: Literal["text", "json"] = "text"
    #: A `canaryd worker` serves its own /metrics on this port when set (the API's /metrics has no
    #: engine figures in production mode, where workers run the ticks).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # --- notifications (docs/notifications.md) -------------------------------------------------------------
    #: Longest one delivery attempt may take in all (connect, send, answer), in seconds.
    webhook_timeout: float = Field(default=5.0, gt=0, le=120)
    #: Attempts of one delivery before it is marked failed (the first one included).
    webhook_max_attempts: int = Field(default=12, ge=1, le=100)
    #: Wait after the first failed attempt; doubled after each further one (2, 4, 8, … s).
    webhook_backoff: float = Field(default=2.0, gt=0)
    #: Longest wait between two attempts (12 attempts with the defaults span about 37 minutes).
    webhook_backoff_max: float = Field(default=600.0, gt=0)
    #: How often each worker (or the embedded server) looks for deliveries that are due.
    webhook_poll_interval: float = Field(default=1.0, gt=0, le=60)
    #: Delivered and failed deliveries are deleted this many days after they finished.
    webhook_retention_days: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'canaryd.db'}"
        return self

    @model_validator(mode="after")
    def _one_embedded_process(self) -> Settings:
        if self.api_workers > 1 and self.embedded:
            raise ValueError(
                "api_workers above 1 needs production mode (CANARYD_REDIS_URL): embedded mode's scheduler and "
                "event bus live in one process"
            )
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

    # --- secrets from files, bootstrap token strength (deploy/README.md, "Secrets") ---------------------------
    #: Files holding a secret instead of the variable itself (Docker/Compose secrets, systemd credentials):
    #: CANARYD_BOOTSTRAP_TOKEN_FILE, CANARYD_DATABASE_URL_FILE, CANARYD_REDIS_URL_FILE.
    bootstrap_token_file: Path | None = None
    database_url_file: Path | None = None
    redis_url_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """Reads each `*_FILE` setting into its variable (surrounding whitespace and the final newline
        dropped); setting both the variable and its file is refused rather than one silently winning."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in SECRET_FILE_SETTINGS:
            path = data.get(f"{name}_file")
            if path in (None, ""):
                continue
            variable = f"CANARYD_{name.upper()}"
            if data.get(name) not in (None, ""):
                raise ValueError(f"set {variable} or {variable}_FILE, not both")
            try:
                data[name] = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise ValueError(f"{variable}_FILE={path}: cannot read it ({reason})") from None
            if not data[name]:
                raise ValueError(f"{variable}_FILE={path} is empty")
        return data

    @field_validator("bootstrap_token")
    @classmethod
    def _strong_bootstrap_token(cls, token: str | None) -> str | None:
        """The bootstrap token is an admin credential: an unset or empty one disables it, a short one (an
        example value such as `change-me` left in place) stops canaryd from starting."""
        if not token:
            return None
        if len(token) < MIN_BOOTSTRAP_TOKEN_LENGTH:
            raise ValueError(
                f"CANARYD_BOOTSTRAP_TOKEN is {len(token)} characters long; it must have at least "
                f"{MIN_BOOTSTRAP_TOKEN_LENGTH} (an admin credential). Make one with: "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return token


#: Settings that may instead be read from the file named by CANARYD_<NAME>_FILE.
SECRET_FILE_SETTINGS = ("bootstrap_token", "database_url", "redis_url")
#: 24 rather than 32: the shared contract harness (read-only here) makes 25-character tokens of 80 random bits.
MIN_BOOTSTRAP_TOKEN_LENGTH = 24
