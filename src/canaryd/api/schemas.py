"""Request bodies of the HTTP API (pydantic v2). Every value that reaches a proxy or a shell is patterned."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from canaryd.domain.config import (
    CanaryConfig,
    Command,
    HealthPath,
    Host,
    Name,
    ProxySpec,
    StrictModel,
    UserName,
    Version,
)


class ServerCreate(StrictModel):
    name: Name
    host: Host
    transport: Literal["ssh", "local"] = "ssh"
    ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_user: UserName = "root"
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels) > 50:
            raise ValueError("at most 50 labels")
        for key, value in labels.items():
            if not key or len(key) > 63 or not all(c.isalnum() or c in "_.-/" for c in key):
                raise ValueError(f"label key {key[:80]!r} must be 1-63 letters, digits, '_', '.', '-' or '/'")
            if len(value) > 256 or any(ord(c) < 32 for c in value):
                raise ValueError(
                    f"label {key!r}: value must be at most 256 characters, without control characters"
                )
        return labels


class ApplicationCreate(StrictModel):
    name: Name
    port: int = Field(ge=1, le=65535)
    health_path: HealthPath = "/health"
    server_ids: list[int] = Field(min_length=1, max_length=1000)
    current_version: Version
    deploy_command: Command
    stop_command: Command | None = None
    proxy: ProxySpec

    @field_validator("server_ids")
    @classmethod
    def _unique(cls, ids: list[int]) -> list[int]:
        if len(set(ids)) != len(ids):
            raise ValueError("server_ids must not repeat a server")
        return ids

    @field_validator("proxy")
    @classmethod
    def _supported(cls, proxy: ProxySpec) -> ProxySpec:
        if proxy.kind not in ("nginx", "haproxy", "traefik"):
            raise ValueError(
                f"proxy kind {proxy.kind!r} is not supported; use 'nginx', 'haproxy' or 'traefik'"
            )
        return proxy


class DeploymentCreate(StrictModel):
    version: Version
    strategy: Literal["canary"] = "canary"
    config: CanaryConfig = Field(default_factory=CanaryConfig)


class ActionRequest(StrictModel):
    """Body of promote/rollback/pause/resume (all optional)."""

    to: Literal["next", "full"] = "full"
    reason: str | None = Field(default=None, max_length=500)


class TokenCreate(StrictModel):
    name: Name
    scope: Literal["read", "deploy", "operate", "admin"]
    #: Seconds until the token stops working (at most ten years); omitted: it never expires.
    expires_in: int | None = Field(default=None, ge=1, le=315_360_000)
