"""What users send, validated: canary settings, application and proxy settings.

Every value that ends up in proxy configuration or in a shell command is checked here against a strict
pattern, so that renderers only ever see harmless text; renderers quote as well (defence in depth).
Validation collects every problem at once (pydantic does, as long as validators raise ValueError).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from contextvars import ContextVar
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from canaryd.domain.commands import check_template

DEFAULT_STAGES = (10.0, 25.0, 50.0, 75.0, 100.0)
DEFAULT_MAX_WEIGHT = 1000
HAPROXY_MAX_WEIGHT = 256
SPEC_MIN_STAGE_DURATION = 60

#: The stage_duration floor for validations that cannot be handed a pydantic context (FastAPI validates
#: request bodies itself); the API sets it per request from the settings. A validation context wins.
STAGE_DURATION_FLOOR: ContextVar[int] = ContextVar("stage_duration_floor", default=SPEC_MIN_STAGE_DURATION)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_PATH = re.compile(r"^/[A-Za-z0-9_./@+-]{0,1023}$")
_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9_./~%?=&+-]{0,255}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _check(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def validate(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{what} {value[:80]!r} is not allowed ({_PATTERN_HELP[what]})")
        return value

    return AfterValidator(validate)


_PATTERN_HELP = {
    "name": "letters, digits, '.', '_' and '-', at most 63, starting with a letter or digit",
    "version": "letters, digits, '.', '_', '+' and '-', at most 128, starting with a letter or digit",
    "path": "an absolute path of letters, digits and _ . / @ + -",
    "health path": "a path starting with '/' without spaces, quotes or ';'",
    "user": "a POSIX user name",
    "header": "an HTTP header name: letters, digits and '-', at most 64",
}

Name = Annotated[str, _check(_NAME, "name")]
Version = Annotated[str, _check(_VERSION, "version")]
FilePath = Annotated[str, _check(_PATH, "path")]
HealthPath = Annotated[str, _check(_HEALTH_PATH, "health path")]
UserName = Annotated[str, _check(_USER, "user")]


def validate_host(value: str) -> str:
    """A hostname or an IPv4/IPv6 address, nothing else."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(f"host {value[:80]!r} is not a valid hostname or IP address")
    return value.lower()


Host = Annotated[str, AfterValidator(validate_host)]


def validate_command(value: str) -> str:
    """Operator-written command templates: one line, known placeholders only."""
    if not value.strip():
        raise ValueError("command must not be empty")
    if len(value) > 2000:
        raise ValueError("command must be at most 2000 characters")
    if any(c in value for c in "\n\r\x00"):
        raise ValueError("command must be a single line")
    check_template(value)
    return value


Command = Annotated[str, AfterValidator(validate_command)]


def validate_listen(value: str) -> str:
    """`port`, `ipv4:port` or `[ipv6]:port`."""
    m = re.fullmatch(r"(?:(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:]+\]):)?(\d{1,5})", value)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ValueError(f"listen {value[:80]!r} must be 'port', 'ipv4:port' or '[ipv6]:port'")
    if m.group(1):
        ipaddress.ip_address(m.group(1).strip("[]"))
    return value


Listen = Annotated[str, AfterValidator(validate_listen)]


def validate_http_url(value: str) -> str:
    """An http(s) URL without spaces, quotes or control characters (it may end up in configuration)."""
    if not re.fullmatch(r"https?://[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]{1,2000}", value) or "'" in value:
        raise ValueError(f"url {value[:80]!r} must be an http:// or https:// URL without spaces or quotes")
    return value


HttpUrl = Annotated[str, AfterValidator(validate_http_url)]
HeaderName = Annotated[str, _check(re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"), "header")]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ProxySpec(StrictModel):
    """How canaryd reaches and drives the proxy in front of an application."""

    kind: Literal["nginx", "haproxy", "traefik"]
    server_id: int = Field(gt=0)
    config_path: FilePath
    reload_command: Command
    test_command: Command | None = None
    listen: Listen | None = None
    access_log: FilePath | None = None
    runtime_socket: FilePath | None = None
    #: Largest per-server weight canaryd will write (finer splits need larger weights). Default: 1000 for
    #: nginx and Traefik, 256 for HAProxy (its hard limit).
    max_weight: int | None = Field(default=None, ge=1, le=1_000_000)
    #: nginx only: idle keep-alive connections to the app per worker (0 = a new connection per request,
    #: nginx's default). Apps that answer in several writes need TCP_NODELAY for keep-alive to be fast.
    upstream_keepalive: int = Field(default=0, ge=0, le=1024)
    #: Cookie-based stickiness: a client keeps the cohort it first got, within a stage.
    sticky: bool = False
    #: A request header that forces a cohort whatever the split: value "always" (canary) or "never" (stable).
    force_header: HeaderName | None = None
    #: Traefik only: where its read-only API and its Prometheus metrics are.
    api_url: HttpUrl | None = None
    metrics_url: HttpUrl | None = None
    #: Traefik only: "file" writes the dynamic configuration to config_path over the transport;
    #: "http" serves it from canaryd (Traefik's HTTP provider polls it).
    provider: Literal["file", "http"] = "file"

    @property
    def weight_limit(self) -> int:
        """The effective largest weight: max_weight, or the proxy's default."""
        if self.max_weight is not None:
            return self.max_weight
        return HAPROXY_MAX_WEIGHT if self.kind == "haproxy" else DEFAULT_MAX_WEIGHT

    @model_validator(mode="after")
    def _weights_fit_the_proxy(self) -> ProxySpec:
        if self.kind == "haproxy" and self.max_weight is not None and self.max_weight > HAPROXY_MAX_WEIGHT:
            raise ValueError(f"max_weight must be at most {HAPROXY_MAX_WEIGHT} for HAProxy")
        return self


class CanaryConfig(StrictModel):
    """Canary settings of one deployment. Defaults are the spec's."""

    stages: list[float] = Field(default_factory=lambda: list(DEFAULT_STAGES))
    stage_duration: int = 300
    error_rate_threshold: float = 5.0  # percentage points over stable
    latency_threshold: float = 50.0  # percent over stable's p95
    latency_min_difference_ms: float = (
        25.0  # below this absolute p95 difference latency is never judged worse
    )
    canary_server_percentage: float = 20.0
    health_check_interval: int = 10
    max_failed_health_checks: int = 3
    min_requests: int = 20  # per cohort and stage before the judge decides anything
    deploy_timeout: int = 300  # seconds for one deploy command plus its health gate
    judge: Literal["threshold"] = "threshold"

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages: list[float]) -> list[float]:
        problems = []
        if not stages:
            problems.append("stages must list at least one percentage")
        if any(not 0 < s <= 100 for s in stages):
            problems.append("stage percentages must be between 0 and 100")
        if any(b <= a for a, b in itertools.pairwise(stages)):
            problems.append("stage percentages must increase")
        if len(stages) > 50:
            problems.append("at most 50 stages")
        if problems:
            raise ValueError("; ".join(problems))
        return stages

    @field_validator("stage_duration")
    @classmethod
    def _stage_duration(cls, value: int, info: ValidationInfo) -> int:
        minimum = (info.context or {}).get("min_stage_duration", STAGE_DURATION_FLOOR.get())
        if value < minimum:
            raise ValueError(f"stage_duration must be at least {minimum} seconds")
        if value > 7 * 24 * 3600:
            raise ValueError("stage_duration must be at most 7 days")
        return value

    @field_validator("error_rate_threshold", "latency_threshold")
    @classmethod
    def _positive(cls, value: float, info: ValidationInfo) -> float:
        if value <= 0:
            raise ValueError(f"{info.field_name} must be positive")
        return value

    @field_validator("latency_min_difference_ms")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("latency_min_difference_ms must not be negative")
        return value

    @field_validator("canary_server_percentage")
    @classmethod
    def _server_share(cls, value: float) -> float:
        if not 0 < value <= 50:
            raise ValueError("canary_server_percentage must be greater than 0 and at most 50")
        return value

    @field_validator("health_check_interval", "max_failed_health_checks", "min_requests", "deploy_timeout")
    @classmethod
    def _at_least_one(cls, value: int, info: ValidationInfo) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name} must be at least 1")
        return value

    @model_validator(mode="after")
    def _interval_fits_stage(self) -> CanaryConfig:
        if self.health_check_interval > self.stage_duration:
            raise ValueError("health_check_interval must not be longer than stage_duration")
        return self


def parse_canary_config(raw: dict[str, object] | None, min_stage_duration: int) -> CanaryConfig:
    """Validates user-supplied canary settings; raises pydantic.ValidationError listing every problem."""
    return CanaryConfig.model_validate(raw or {}, context={"min_stage_duration": min_stage_duration})


__all__ = [
    "CanaryConfig",
    "Command",
    "FilePath",
    "HealthPath",
    "Host",
    "Listen",
    "Name",
    "ProxySpec",
    "UserName",
    "Version",
    "parse_canary_config",
]
