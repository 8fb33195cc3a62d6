"""Request and response bodies of the HTTP API (pydantic v2). Every value that reaches a proxy or a shell is
patterned; every list and string has a maximum (bounded input)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from canaryd.domain.config import (
    Command,
    HealthPath,
    Host,
    Name,
    ProxySpec,
    SchemaMax,
    StrictModel,
    UserName,
    Version,
)
from canaryd.domain.defaults import CanaryConfigOverrides
from canaryd.domain.strategy import StrategyName

#: What /docs says about an application's deployment_defaults.
DEFAULTS_DOC = (
    "Default deployment settings: any subset of the deployment `config` (CanaryConfig). A deployment's "
    "own `config` overrides them field by field; nested objects (`prometheus`) are replaced whole, not "
    "merged. Checked as a whole deployment configuration when set."
)


class ServerCreate(StrictModel):
    name: Name
    host: Host
    transport: Literal["ssh", "local"] = "ssh"
    ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_user: UserName = "root"
    labels: dict[str, Annotated[str, SchemaMax(maxLength=256)]] = Field(
        default_factory=dict, json_schema_extra={"maxProperties": 50}
    )

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


class ServerPatch(StrictModel):
    """The fields of a server to change; each is validated as on creation, the others are kept."""

    name: Name | None = None
    host: Host | None = None
    transport: Literal["ssh", "local"] | None = None
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    ssh_user: UserName | None = None
    labels: dict[str, Annotated[str, SchemaMax(maxLength=256)]] = Field(
        default_factory=dict, json_schema_extra={"maxProperties": 50}
    )


class ApplicationCreate(StrictModel):
    name: Name
    port: int = Field(ge=1, le=65535)
    green_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="strategy blue_green: the second port of every server, where the new version starts "
        "beside the old one (deploy_command's {port}); after a blue-green deployment port and green_port "
        "trade places",
    )
    health_path: HealthPath = "/health"
    server_ids: list[int] = Field(min_length=1, max_length=1000)
    current_version: Version
    deploy_command: Command
    stop_command: Command | None = None
    proxy: ProxySpec
    deployment_defaults: CanaryConfigOverrides = Field(
        default_factory=CanaryConfigOverrides, description=DEFAULTS_DOC
    )

    @field_validator("server_ids")
    @classmethod
    def _unique(cls, ids: list[int]) -> list[int]:
        if len(set(ids)) != len(ids):
            raise ValueError("server_ids must not repeat a server")
        return ids

    @field_validator("green_port")
    @classmethod
    def _other_port(cls, green_port: int | None, info: ValidationInfo) -> int | None:
        if green_port is not None and green_port == info.data.get("port"):
            raise ValueError("green_port must differ from port (the old and new versions run side by side)")
        return green_port


class DeploymentCreate(StrictModel):
    version: Version
    strategy: StrategyName = Field(
        default="canary",
        description="`canary`: a growing random share of requests per stage (`config.stages`). `ab`: only "
        "requests matching one of `config.ab.match` (a header or cookie, equals or regex) go to the canary "
        "servers, all others to stable, for one stage of `stage_duration`; then promote or roll back. "
        "`rolling`: `config.rolling.batch_size` servers (or `batch_percent` of them) at a time are drained, "
        "upgraded and judged for `stage_duration` against the servers not yet upgraded. "
        "`mirror` (nginx and Traefik): a copy of `config.mirror.percent` % of requests goes to the canary while "
        "clients get stable's answers, for one stage; then the canary stages (`then: canary`) or an end "
        "without promoting (`then: stop`). "
        "`blue_green`: the new version starts beside the old on the application's `green_port` of every "
        "server, is tested on the requests matching `config.blue_green.test_match` (default `X-Canary: "
        "always`), then all traffic switches at once; the old keeps running `keep_old` seconds, then stops. "
        "See docs/strategies.md.",
    )
    config: CanaryConfigOverrides = Field(
        default_factory=CanaryConfigOverrides,
        description="The deployment's own settings (any subset of CanaryConfig); each one given overrides "
        "the application's deployment_defaults, the others come from them, then from CanaryConfig's defaults.",
    )


class ActionRequest(StrictModel):
    """Body of promote/rollback/pause/resume (all optional)."""

    to: Literal["next", "full"] = "full"
    reason: str | None = Field(default=None, max_length=500)


class TokenCreate(StrictModel):
    name: Name
    scope: Literal["read", "deploy", "operate", "admin"]
    #: Seconds until the token stops working (at most ten years); omitted: it never expires.
    expires_in: int | None = Field(
        default=None, ge=1, le=315_360_000, description="seconds until it stops working; omitted: never"
    )


# --- Responses -------------------------------------------------------------------------------------------
# Typed so that /docs shows every field; each has an example built from a real deployment's output.


class ServerOut(BaseModel):
    """A registered server."""

    id: int
    name: str = Field(max_length=63)
    host: str = Field(max_length=253)
    transport: Literal["ssh", "local"]
    ssh_port: int
    ssh_user: str = Field(max_length=32)
    labels: dict[str, str]
    created_at: str = Field(description="ISO 8601, UTC")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 1,
                "name": "web-1",
                "host": "10.0.0.11",
                "transport": "ssh",
                "ssh_port": 22,
                "ssh_user": "deploy",
                "labels": {"rack": "a"},
                "created_at": "2026-11-29T18:00:00+00:00",
            }
        }
    )


class ApplicationOut(BaseModel):
    """A registered application and the proxy in front of it."""

    id: int
    name: str = Field(max_length=63)
    port: int
    green_port: int | None = Field(default=None, description="strategy blue_green's second port, if set")
    health_path: str
    server_ids: list[int] = Field(max_length=1000)
    current_version: str = Field(description="the version every server runs when no deployment is active")
    deploy_command: str
    stop_command: str | None
    proxy: dict[str, Any] = Field(description="the proxy settings (see ProxySpec)")
    proxy_generation: int = Field(description="how many configurations canaryd has applied to the proxy")
    deployment_defaults: dict[str, Any] = Field(default_factory=dict, description=DEFAULTS_DOC)
    created_at: str = Field(description="ISO 8601, UTC")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 1,
                "name": "shop",
                "port": 8000,
                "health_path": "/health",
                "server_ids": [1, 2, 3, 4, 5],
                "current_version": "1.4.0",
                "deploy_command": "sudo /usr/local/bin/deploy-shop {version}",
                "stop_command": None,
                "proxy": {"kind": "nginx", "server_id": 6, "config_path": "/etc/nginx/canaryd.d/shop.conf"},
                "proxy_generation": 3,
                "deployment_defaults": {"stages": [5, 25, 100], "stage_duration": 600},
                "created_at": "2026-11-29T18:00:00+00:00",
            }
        }
    )


class ServerRef(BaseModel):
    id: int
    name: str | None
    host: str | None


_STATUS_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "application_id": 1,
    "version": "1.5.0",
    "previous_version": "1.4.0",
    "strategy": "canary",
    "status": "in_progress",
    "canary_status": "monitoring",
    "paused_from": None,
    "current_stage": 2,
    "total_stages": 5,
    "current_traffic_percentage": 25.0,
    "target_traffic_percentage": 25.0,
    "canary_servers": [{"id": 3, "name": "web-3", "host": "10.0.0.13"}],
    "stable_servers": [{"id": 1, "name": "web-1", "host": "10.0.0.11"}],
    "server_versions": {"1": "1.4.0", "3": "1.5.0"},
    "metrics": {
        "stage": 2,
        "canary": {"requests": 412, "errors": 1, "error_rate": 0.00243, "p50_ms": 12.1, "p95_ms": 40.3},
        "stable": {"requests": 1230, "errors": 2, "error_rate": 0.00163, "p50_ms": 11.8, "p95_ms": 39.0},
        "verdict": {
            "outcome": "inconclusive",
            "compared_with": "stable",
            "reasons": ["error_rate: 412 canary requests so far; a pass needs 650"],
            "metrics": [
                {
                    "metric": "error_rate",
                    "outcome": "inconclusive",
                    "reason": "412 canary requests so far; a pass needs 650",
                    "figures": {"canary_errors": 1, "canary_requests": 412},
                }
            ],
        },
    },
    "config": {"stages": [10, 25, 50, 75, 100], "stage_duration": 300},
    "config_sources": {"stages": "application", "stage_duration": "deployment"},
    "stage_started_at": "2026-11-29T18:05:00+00:00",
    "next_stage_at": "2026-11-29T18:10:00+00:00",
    "can_promote": True,
    "can_rollback": True,
    "allowed_actions": ["pause", "promote", "rollback"],
    "reasons": ["stage 2: 25 %"],
    "created_by": "token:ci",
    "created_at": "2026-11-29T18:00:00+00:00",
    "updated_at": "2026-11-29T18:06:00+00:00",
    "finished_at": None,
}


class WaitingFor(BaseModel):
    """The stage an approval gate holds back."""

    stage: int = Field(description="1-based number of the stage that waits")
    percentage: float = Field(description="its share of requests (%)")


class BatchView(BaseModel):
    """One batch of a rolling update."""

    batch: int = Field(description="1-based, in the order the batches run")
    servers: list[ServerRef]
    state: Literal["upgraded", "judged", "deploying", "to come", "upgrading", "rolled back", "not run"] = (
        Field(
            description="upgraded (judged and passed), judged (its stage runs), deploying (drained, being "
            "deployed), to come, upgrading (a promotion upgrades the rest), rolled back, not run"
        )
    )


class DeploymentStatus(BaseModel):
    """The status object: what a deployment is doing, what it saw, and what an operator may do now."""

    id: int
    application_id: int
    version: str
    previous_version: str
    strategy: str
    status: str = Field(description="pending, in_progress, completed, rolled_back or failed")
    canary_status: str = Field(
        description="pending, deploying, monitoring, waiting_for_approval, paused, promoting, rolling_back, "
        "completed, rolled_back or failed (docs/design.md, Lifecycle)"
    )
    paused_from: str | None = Field(description="the state a paused deployment resumes into")
    current_stage: int = Field(description="1-based; 0 before monitoring began")
    total_stages: int
    current_traffic_percentage: float = Field(
        description="share of requests (%) the canary gets, from the weights the proxy really applied"
    )
    target_traffic_percentage: float = Field(
        description="the stage's target share (%) of the random split (0 during an A/B test, whose canary gets the requests its rules match)"
    )
    canary_servers: list[ServerRef]
    stable_servers: list[ServerRef]
    server_versions: dict[str, str] = Field(
        default_factory=dict, description="server id → the version it runs (`unknown` while being changed)"
    )
    metrics: dict[str, Any] | None = Field(
        description="the last check: per-cohort figures (requests, errors, error_rate, p50_ms, p95_ms) and "
        "the verdict with each metric's outcome, reason and figures"
    )
    config: dict[str, Any] = Field(
        description="the deployment's effective settings (CanaryConfig), fixed when it was created: its "
        "own config over the application's deployment_defaults over the defaults"
    )
    config_sources: dict[str, Literal["deployment", "application", "default"]] | None = Field(
        default=None,
        description="where each setting of `config` came from: `deployment` (its own config), "
        "`application` (the application's deployment_defaults) or `default`; null for deployments "
        "created before canaryd kept application defaults",
    )
    stage_started_at: str | None
    next_stage_at: str | None = Field(description="when the stage ends if the verdict allows")
    switched_at: str | None = Field(
        default=None,
        description="strategy blue_green: when every request went to the new version (null before the switch)",
    )
    batches: list[BatchView] | None = Field(
        default=None,
        description="strategy rolling: each batch's servers and where it stands (null for other strategies)",
    )
    can_promote: bool
    can_rollback: bool
    allowed_actions: list[Literal["pause", "resume", "promote", "rollback"]] = Field(
        description="the manual actions the state allows now (the token's scope must allow them too)"
    )
    waiting_for: WaitingFor | None = Field(
        default=None,
        description="while waiting_for_approval: the stage that waits (resume or promote to next starts it)",
    )
    reasons: list[str]
    created_by: str
    created_at: str | None
    updated_at: str | None
    finished_at: str | None

    model_config = ConfigDict(json_schema_extra={"example": _STATUS_EXAMPLE})


class DeploymentEventOut(BaseModel):
    """One entry of a deployment's history."""

    id: int
    deployment_id: int
    seq: int = Field(description="1, 2, 3, … per deployment, without gaps")
    at: str | None
    kind: str = Field(description="deployment_created, stage_advanced, paused, rollback_started, …")
    from_state: str | None
    to_state: str | None
    stage: int | None
    traffic_percentage: float | None
    metrics: dict[str, Any] = Field(description="the metrics snapshot at the time of the event")
    reasons: list[str]
    actor: str = Field(description="`canaryd` for automatic decisions, `token:<name>` for an operator")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 31,
                "deployment_id": 7,
                "seq": 4,
                "at": "2026-11-29T18:05:00+00:00",
                "kind": "stage_advanced",
                "from_state": "monitoring",
                "to_state": "monitoring",
                "stage": 2,
                "traffic_percentage": 25.0,
                "metrics": _STATUS_EXAMPLE["metrics"],
                "reasons": ["stage 1 passed: every metric passed"],
                "actor": "canaryd",
            }
        }
    )


class TokenRow(BaseModel):
    """An API token as listed: never the token itself or its hash."""

    id: int
    name: str
    scope: Literal["read", "deploy", "operate", "admin"]
    created_at: str | None
    expires_at: str | None = Field(description="when it stops working; null: never")
    revoked_at: str | None
    active: bool = Field(description="neither revoked nor expired")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 3,
                "name": "ci",
                "scope": "deploy",
                "created_at": "2026-11-29T10:00:00+00:00",
                "expires_at": None,
                "revoked_at": None,
                "active": True,
            }
        }
    )


class TokenOut(BaseModel):
    """A new API token: shown in this response only; canaryd stores its SHA-256."""

    id: int | None = None
    name: str
    scope: Literal["read", "deploy", "operate", "admin"]
    token: str
    expires_at: str | None = None
    active: bool = True

    model_config = ConfigDict(
        json_schema_extra={"example": {"name": "ci", "scope": "deploy", "token": "cdt_3q9…"}}
    )


class TokenInfo(BaseModel):
    """Who a token is: its name and scope (never the token)."""

    name: str
    scope: Literal["read", "deploy", "operate", "admin"]

    model_config = ConfigDict(json_schema_extra={"example": {"name": "oncall", "scope": "operate"}})


class Problem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None


class ErrorOut(BaseModel):
    """Every error: a sentence, or (422) the list of every problem found."""

    detail: str | list[Problem]

    model_config = ConfigDict(
        json_schema_extra={"example": {"detail": "cannot pause a deployment that is promoting"}}
    )


class HealthOut(BaseModel):
    """canaryd is up and its database answers."""

    status: Literal["ok"]
    mode: Literal["embedded", "production"]

    model_config = ConfigDict(json_schema_extra={"example": {"status": "ok", "mode": "production"}})
