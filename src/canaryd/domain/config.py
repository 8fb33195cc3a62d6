"""What users send, validated: canary settings, application and proxy settings.

Every value that ends up in proxy configuration or in a shell command is checked here against a strict
pattern, so that renderers only ever see harmless text; renderers quote as well (defence in depth).
Validation collects every problem at once (pydantic does, as long as validators raise ValueError).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from canaryd.domain.addresses import HEADER_NAME, normalise_host, parse_listen
from canaryd.domain.commands import check_template
from canaryd.domain.matching import MAX_RULES, rule_problems
from canaryd.domain.types import MatchRule

DEFAULT_STAGES = (10.0, 25.0, 50.0, 75.0, 100.0)
#: Strategy rolling: the share of the servers one batch upgrades when neither size is given (Kubernetes'
#: maxUnavailable default).
DEFAULT_BATCH_PERCENT = 25.0
DEFAULT_MAX_WEIGHT = 1000
HAPROXY_MAX_WEIGHT = 256


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_PATH = re.compile(r"^/[A-Za-z0-9_./@+-]{0,1023}$")
_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9_./~%?=&+-]{0,255}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class SchemaMax:
    """Shows in the JSON schema a maximum that a validator already enforces; it changes no validation."""

    def __init__(self, **schema: int) -> None:
        self.schema = schema

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(core_schema)
        out.update(self.schema)
        return out


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

Name = Annotated[str, _check(_NAME, "name"), SchemaMax(maxLength=63)]
Version = Annotated[str, _check(_VERSION, "version"), SchemaMax(maxLength=128)]
FilePath = Annotated[str, _check(_PATH, "path"), SchemaMax(maxLength=1024)]
HealthPath = Annotated[str, _check(_HEALTH_PATH, "health path"), SchemaMax(maxLength=256)]
UserName = Annotated[str, _check(_USER, "user"), SchemaMax(maxLength=32)]


def validate_host(value: str) -> str:
    """A hostname or an IPv4/IPv6 address (without brackets), nothing else."""
    if value.startswith("["):
        raise ValueError(f"host {value[:80]!r}: write an IPv6 address without brackets")
    return normalise_host(value)


Host = Annotated[str, AfterValidator(validate_host), SchemaMax(maxLength=253)]


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


Command = Annotated[str, AfterValidator(validate_command), SchemaMax(maxLength=2000)]


def validate_listen(value: str) -> str:
    """`port`, `ipv4:port` or `[ipv6]:port` (domain/addresses.py, the pattern every renderer uses too)."""
    parse_listen(value)
    return value


Listen = Annotated[str, AfterValidator(validate_listen), SchemaMax(maxLength=47)]


def validate_http_url(value: str) -> str:
    """An http(s) URL without spaces, quotes or control characters (it may end up in configuration)."""
    if not re.fullmatch(r"https?://[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]{1,2000}", value) or "'" in value:
        raise ValueError(f"url {value[:80]!r} must be an http:// or https:// URL without spaces or quotes")
    return value


HttpUrl = Annotated[str, AfterValidator(validate_http_url), SchemaMax(maxLength=2008)]
HeaderName = Annotated[str, _check(HEADER_NAME, "header"), SchemaMax(maxLength=64)]

_RULE_TOKEN = re.compile(
    r"\s+|&&|\|\||!|\(|\)|,|`[^`\x00-\x1f\x7f]{0,500}`"
    r"|(?:Host|HostRegexp|Path|PathPrefix|PathRegexp|Method|Header|HeaderRegexp|Query|QueryRegexp|ClientIP)\b"
)


def validate_traefik_rule(value: str) -> str:
    """A Traefik v3 router rule made only of known matchers, backtick strings, `&& || !` and balanced
    parentheses, so that canaryd can extend it (`(rule) && Header(...)`) without changing its meaning."""
    if not value.strip() or len(value) > 2000:
        raise ValueError("router_rule must be a non-empty Traefik rule of at most 2000 characters")
    depth, pos = 0, 0
    while pos < len(value):
        m = _RULE_TOKEN.match(value, pos)
        if m is None:
            raise ValueError(f"router_rule {value[:80]!r} has unexpected text at position {pos}")
        token = m.group()
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth < 0:
            raise ValueError(f"router_rule {value[:80]!r} has unbalanced parentheses")
        pos = m.end()
    if depth:
        raise ValueError(f"router_rule {value[:80]!r} has unbalanced parentheses")
    return value


TraefikRule = Annotated[str, AfterValidator(validate_traefik_rule), SchemaMax(maxLength=2000)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ServersTransport(StrictModel):
    """Traefik only: how Traefik talks to the application's servers (its `serversTransport`). Unset fields
    keep Traefik's defaults (2 idle connections per host, no forwarding timeouts but a 90 s idle timeout)."""

    #: Idle keep-alive connections Traefik keeps per server; -1 opens a new connection per request.
    max_idle_conns_per_host: int | None = Field(default=None, ge=-1, le=10_000)
    #: Seconds to wait for a connection to a server.
    dial_timeout: float | None = Field(default=None, gt=0, le=3600)
    #: Seconds to wait for a server's response headers once the request is written.
    response_header_timeout: float | None = Field(default=None, gt=0, le=3600)
    #: Seconds an idle keep-alive connection to a server stays open.
    idle_conn_timeout: float | None = Field(default=None, gt=0, le=3600)


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
    #: Traefik only: the rule of the application's router (e.g. "Host(`shop.example.com`)"). When set, canaryd
    #: owns the router (and, with force_header, the header routers); when unset, the operator's own router
    #: points at the weighted service `canaryd-app-<id>@file` (or `@http`).
    router_rule: TraefikRule | None = None
    #: Traefik only: the servers transport of the application's services (upstream keep-alive, timeouts).
    servers_transport: ServersTransport | None = None

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

    @model_validator(mode="after")
    def _traefik_settings(self) -> ProxySpec:
        if self.kind != "traefik":
            if self.router_rule is not None or self.servers_transport is not None:
                raise ValueError("router_rule and servers_transport are Traefik settings")
            return self
        problems = []
        if self.api_url is None:
            problems.append("Traefik needs api_url (its API, to confirm the weights it loaded)")
        if self.metrics_url is None:
            problems.append("Traefik needs metrics_url (its Prometheus metrics, to observe traffic)")
        if self.provider == "file" and not self.config_path.endswith((".yml", ".yaml")):
            problems.append(
                "Traefik's file provider reads only .yml, .yaml and .toml: config_path must end in .yml"
            )
        if self.test_command is not None:
            problems.append("Traefik has no configuration test command; canaryd validates the file itself")
        if self.listen is not None or self.access_log is not None:
            problems.append(
                "listen and access_log are not used with Traefik (entry points are static config)"
            )
        if self.force_header is not None and self.router_rule is None:
            problems.append("force_header on Traefik needs router_rule (the header routes extend that rule)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _haproxy_needs_its_socket(self) -> ProxySpec:
        # Weights change through HAProxy's runtime API (no reload); without the admin socket that is impossible.
        if self.kind == "haproxy" and self.runtime_socket is None:
            raise ValueError("runtime_socket (HAProxy's admin 'stats socket' path) is required for HAProxy")
        return self


PROMQL_PLACEHOLDERS = frozenset({"instances", "window", "cohort", "version"})
_PROMQL_PLACEHOLDER = re.compile(r"\$([A-Za-z_]*)")


def validate_promql(value: str) -> str:
    """A PromQL template: one line of printable text, at most 1000 characters, known `$placeholders` only.

    It goes into an HTTP query parameter (never a shell or proxy config); placeholder values are
    validated and escaped when rendered (metrics/prometheus.py)."""
    if not value.strip() or len(value) > 1000:
        raise ValueError("a PromQL template must be non-empty and at most 1000 characters")
    if any(not c.isprintable() for c in value):
        raise ValueError("a PromQL template must be one line of printable characters")
    unknown = {m for m in _PROMQL_PLACEHOLDER.findall(value) if m not in PROMQL_PLACEHOLDERS}
    if unknown:
        known = ", ".join(f"${p}" for p in sorted(PROMQL_PLACEHOLDERS))
        raise ValueError(f"unknown placeholder(s) {', '.join(sorted(unknown))!r} in PromQL (known: {known})")
    return value


PromQL = Annotated[str, AfterValidator(validate_promql), SchemaMax(maxLength=1000)]


class PrometheusQueries(StrictModel):
    """PromQL templates, rendered per cohort. `$instances` is a regex of the cohort's host:port addresses,
    `$window` the stage so far (e.g. `95s`), `$cohort` canary or stable, `$version` the cohort's version."""

    requests: PromQL = 'sum(increase(http_requests_total{instance=~"$instances"}[$window]))'
    errors: PromQL = 'sum(increase(http_requests_total{instance=~"$instances",code=~"5.."}[$window]))'
    #: Cumulative latency buckets by `le` (seconds), as a Prometheus histogram gives them.
    latency_buckets: PromQL = (
        'sum by (le) (increase(http_request_duration_seconds_bucket{instance=~"$instances"}[$window]))'
    )


class PrometheusSource(StrictModel):
    """Where to read the cohorts' traffic when metrics_source is "prometheus"."""

    url: HttpUrl
    timeout: float = Field(default=5.0, gt=0, le=60)
    queries: PrometheusQueries = Field(default_factory=PrometheusQueries)
    #: Until a stage has run this long (a few scrape intervals), the proxy's figures are judged instead.
    min_window: int = Field(default=15, ge=1, le=3600)


def _deprecated_in_schema(schema: dict[str, Any]) -> None:
    """Shows `dry_run` in the JSON schema as the deprecated name of `analysis` (it is not a field)."""
    schema.setdefault("properties", {})["dry_run"] = {
        "type": "boolean",
        "deprecated": True,
        "title": "Dry Run",
        "description": "Deprecated name of analysis: true means `observe`, false `enforce`. Unit: boolean. "
        "Default: null.",
    }


#: Where a webhook check is called (docs/gates.md). Gates block what follows until every check answers 2xx.
CheckPoint = Literal["pre_deploy", "pre_stage", "during_stage", "pre_promote", "post_rollback"]
#: Points whose checks gate what follows (a refusal holds, then `failure_action`).
GATE_POINTS = frozenset({"pre_deploy", "pre_stage", "pre_promote"})
#: What a status shows instead of a check's secret; refused as a secret, so a copied config cannot sign with it.
REDACTED = "[redacted]"
#: Longest a check called within one tick (during_stage, post_rollback) may take with all its tries, seconds.
MAX_IN_TICK_SECONDS = 60.0


class CheckSpec(StrictModel):
    """A webhook canaryd calls at a named point of the rollout (docs/gates.md)."""

    name: Name
    point: CheckPoint
    url: HttpUrl
    #: Seconds one call may take (connect, send, answer); bounded, as a gate's call holds the tick.
    timeout: float = Field(default=10.0, gt=0, le=30)
    #: Gates: refusals tried again at the next check interval before `failure_action` applies.
    #: during_stage and post_rollback: further tries at once, one second apart.
    retries: int = Field(default=3, ge=0, le=100)
    #: Gates: seconds after the first refusal after which `failure_action` applies, even with retries left.
    retry_timeout: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    #: What a check still refusing after its retries does; None: hold at a gate, ignore elsewhere.
    failure_action: Literal["hold", "rollback", "pause", "ignore"] | None = None
    #: pre_stage and during_stage only: the stage percentages it applies to; None: every stage.
    stages: list[float] | None = Field(default=None, max_length=50)
    #: Signs the body: header X-Canaryd-Signature: sha256=<hex HMAC-SHA256(secret, body)>. Never shown.
    secret: str | None = Field(default=None, min_length=8, max_length=256)

    @property
    def gates(self) -> bool:
        return self.point in GATE_POINTS

    @property
    def action(self) -> str:
        """The failure action in effect."""
        if self.failure_action is not None:
            return self.failure_action
        return "hold" if self.gates else "ignore"

    @model_validator(mode="after")
    def _fits_its_point(self) -> CheckSpec:
        problems = []
        if self.stages is not None and self.point not in ("pre_stage", "during_stage"):
            problems.append(f"check {self.name}: stages applies to pre_stage and during_stage checks only")
        if self.point == "post_rollback" and self.action != "ignore":
            problems.append(
                f"check {self.name}: a post_rollback check can only be ignored when it fails "
                "(failure_action ignore): the rollback is over"
            )
        if self.point == "during_stage" and self.action == "hold":
            problems.append(
                f"check {self.name}: a during_stage check cannot hold (its stage has started); "
                "use ignore, pause or rollback"
            )
        if not self.gates and self.timeout * (self.retries + 1) + self.retries > MAX_IN_TICK_SECONDS:
            problems.append(
                f"check {self.name}: a {self.point} check is tried within one tick: timeout × (retries + 1) "
                f"plus a second between tries must be at most {MAX_IN_TICK_SECONDS:g} s"
            )
        if self.secret is not None and (self.secret == REDACTED or not self.secret.isprintable()):
            problems.append(f"check {self.name}: secret must be printable text other than {REDACTED!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AbRule(StrictModel):
    """One A/B rule: `header` or `cookie` (the name), and `equals` (exact, case-sensitive) or `regex`
    (found anywhere in the value; PCRE and RE2 must read it alike, see domain/matching.py)."""

    header: str | None = Field(default=None, max_length=64, examples=["X-Beta"])
    cookie: str | None = Field(default=None, max_length=64, examples=["plan"])
    equals: str | None = Field(default=None, max_length=128, examples=["1"])
    regex: str | None = Field(default=None, max_length=256, examples=[".*Mobile.*"])

    @model_validator(mode="after")
    def _one_of_each(self) -> AbRule:
        problems = []
        if (self.header is None) == (self.cookie is None):
            problems.append("a match rule names exactly one of header or cookie")
        if (self.equals is None) == (self.regex is None):
            problems.append("a match rule gives exactly one of equals or regex")
        if not problems:
            problems = rule_problems(self.rule())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def rule(self) -> MatchRule:
        header, cookie, equals, regex = self.header, self.cookie, self.equals, self.regex
        name = header if header is not None else cookie
        value = equals if equals is not None else regex
        assert name is not None and value is not None
        return MatchRule(
            "header" if header is not None else "cookie",
            name,
            "equals" if equals is not None else "regex",
            value,
        )


class AbSettings(StrictModel):
    """Strategy `ab`: which requests go to the canary servers while the test runs (any rule matching sends
    the request there; every other request goes to stable). The test is one stage of `stage_duration`."""

    match: list[AbRule] = Field(min_length=1, max_length=MAX_RULES)

    def rules(self) -> tuple[MatchRule, ...]:
        return tuple(r.rule() for r in self.match)


class RollingSettings(StrictModel):
    """Strategy `rolling`: how many servers each batch upgrades, `batch_size` servers or `batch_percent` of
    them (rounded down, at least 1; Kubernetes' maxUnavailable); neither: 25 %. Never all of them."""

    batch_size: int | None = Field(default=None, ge=1, le=1000, examples=[2])
    batch_percent: float | None = Field(default=None, gt=0, lt=100, examples=[25])

    @model_validator(mode="after")
    def _one_of(self) -> RollingSettings:
        if self.batch_size is not None and self.batch_percent is not None:
            raise ValueError("rolling takes batch_size or batch_percent, not both")
        return self

    def batch(self, servers: int) -> int:
        """Servers per batch for an application of `servers` servers (the last batch may be smaller)."""
        if self.batch_size is not None:
            return self.batch_size
        percent = DEFAULT_BATCH_PERCENT if self.batch_percent is None else self.batch_percent
        return max(1, math.floor(servers * percent / 100))


class MirrorSettings(StrictModel):
    """Strategy `mirror`: the share of live requests copied to the canary servers while clients get only
    stable's answers, and what follows a mirror phase that passed."""

    #: Percent of live requests whose copy goes to the canary (the others' copies are dropped at the proxy).
    percent: int = Field(ge=1, le=100, examples=[20])
    #: `canary`: go on with the canary stages (`stages`); `stop`: end without promoting (rolled back);
    #: `blue_green`: the copies go to green instances beside blue, then a blue-green test and switch.
    then: Literal["canary", "stop", "blue_green"] = "canary"


class BlueGreenSettings(StrictModel):
    """Strategy `blue_green`: which requests reach the new (green) instances while they are tested beside the
    old (blue) ones, and how long blue keeps running after the switch for an instant switch back."""

    #: Requests matching any of these rules go to green while it is tested; all others to blue.
    test_match: list[AbRule] = Field(
        default_factory=lambda: [AbRule(header="X-Canary", equals="always")],
        min_length=1,
        max_length=MAX_RULES,
    )
    #: Seconds blue keeps running after the switch (a rollback then is one proxy change); then it is stopped.
    keep_old: int = Field(default=300, ge=0, le=7 * 24 * 3600)

    def rules(self) -> tuple[MatchRule, ...]:
        return tuple(r.rule() for r in self.test_match)


def _dry_run_as_analysis(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` with the deprecated `dry_run` (a bool) read as `analysis` ("observe" when true);
    ValueError when both are given and disagree."""
    data = dict(data)
    dry_run = data.pop("dry_run")
    if isinstance(dry_run, bool):
        meant = "observe" if dry_run else "enforce"
        if data.setdefault("analysis", meant) != meant:
            raise ValueError(
                f"dry_run (the deprecated name of analysis) says {meant!r} but analysis says "
                f"{data['analysis']!r}: give only analysis"
            )
    else:
        data["analysis"] = dry_run  # reported as a problem of analysis
    return data


class CanaryConfig(StrictModel):
    """Canary settings of one deployment. Defaults are the spec's."""

    model_config = ConfigDict(json_schema_extra=_deprecated_in_schema)

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
    # --- the judge (docs/judge.md) ---
    #: "sequential": guards plus always-valid count tests (the default; see the bench in docs/judge.md);
    #: "threshold": the spec's rules above (error_rate_threshold, latency_threshold, min_requests).
    judge: Literal["sequential", "threshold"] = "sequential"
    alpha: float = Field(default=0.02, gt=0, le=0.5)  # false-rollback budget, shared by the tests
    error_rate_margin: float = Field(default=1.0, ge=1, le=10)  # fail only when canary ≥ margin × stable
    latency_margin: float = Field(default=1.25, ge=1, le=10)  # absorbs a threshold set from stable data
    sequential_k: float = Field(default=3.0, gt=0, le=1000)  # prior concentration (SLO ceilings' test)
    #: A pass needs enough requests that this regression would have been caught with `power`:
    #: canary ≥ detect_ratio × stable and at least detect_min_increase percentage points more.
    detect_ratio: float = Field(default=3.0, gt=1, le=100)
    detect_min_increase: float = Field(default=5.0, gt=0, le=100)
    power: float = Field(default=0.8, ge=0.5, le=0.99)
    #: Bursty traffic (docs/judge.md, "Real traffic"): the comparisons count events per time bucket.
    bucket_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="Length in seconds of the time buckets the sequential judge counts errors in; a burst "
        "shorter than this counts as one bucket's worth of evidence (default 60).",
    )
    bucket_max_evidence: float = Field(
        default=2.5,
        gt=1,
        le=1e6,
        description="The most one time bucket can multiply a comparison's e-value by (default 2.5): a "
        "rollback needs evidence from several buckets, so one bad minute on one server cannot roll back.",
    )
    stage_end_alpha: float = Field(
        default=0.008,
        ge=0,
        le=0.2,
        description="False-rollback rate of the one fixed-sample look at the end of each comparing stage's "
        "planned duration (shared by the comparisons like alpha; 0 turns the look off). Per stage: a rollout "
        "with s comparing stages adds at most s × this to alpha (default 0.008).",
    )
    stage_end_alpha_independent: float = Field(
        default=0.0085,
        ge=0,
        le=0.2,
        description="When neither cohort's time buckets show over-dispersion, the stage-end look tests "
        "every canary event exactly (no burst caps) at the level that rolls back an identical canary with "
        "the stage's traffic at most this often (shared by the comparisons like alpha; default 0.0085).",
    )
    burst_allowance: float = Field(
        default=1.0,
        ge=0,
        le=20,
        description="At the stage-end look, a bucket counts at most this many standard deviations (plus "
        "one event) of canary events above what its requests would give at the cohorts' rate (default 1).",
    )
    #: Count requests slower than this; default: stable's p95 plus latency_min_difference_ms.
    latency_tail_ms: float | None = Field(default=None, gt=0, le=600_000)
    #: Absolute SLO ceilings on the canary alone (guards); None = not checked.
    error_rate_ceiling: float | None = Field(default=None, gt=0, lt=100)  # percent
    latency_ceiling_ms: float | None = Field(default=None, gt=0, le=600_000)
    latency_ceiling_quantile: float = Field(default=0.95, ge=0.5, lt=1)
    #: Host readings, canary mean vs stable mean, in percentage points; None = not compared.
    cpu_tolerance: float | None = Field(default=20.0, gt=0, le=100)
    memory_tolerance: float | None = Field(default=10.0, gt=0, le=100)
    #: How long past its duration an inconclusive stage waits for evidence (None: one more stage_duration),
    #: then what happens: "proceed" advances (but never promotes without evidence: after the last stage it
    #: pauses), "pause" asks a person, "rollback" gives up on the canary.
    inconclusive_timeout: int | None = Field(default=None, ge=0, le=7 * 24 * 3600)
    inconclusive_action: Literal["pause", "rollback", "proceed"] = "proceed"
    #: "enforce": the judge's verdicts act (hold, roll back). "observe": they are recorded with what they
    #: would have done, never acted on: stages advance on time and the new version is promoted to every
    #: server. `dry_run` is the deprecated name (true = "observe"), read by `_deprecated_names`.
    analysis: Literal["enforce", "observe"] = "enforce"
    #: Where traffic figures come from: the proxy's own log/counters, or Prometheus.
    metrics_source: Literal["proxy", "prometheus"] = "proxy"
    prometheus: PrometheusSource | None = None
    #: Consecutive failed reads of the metric source before `source_failure_action`.
    source_failure_limit: int = Field(default=3, ge=1, le=100)
    source_failure_action: Literal["pause", "rollback", "proxy"] = "pause"
    #: Stage percentages whose start waits for a person (resume, or promote {"to": "next"}); meanwhile the
    #: previous stage's split is held and still judged.
    approve_before: list[float] = Field(default_factory=list, max_length=50)
    #: Seconds a stage waits for approval before `approval_timeout_action`; None waits indefinitely.
    approval_timeout: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    approval_timeout_action: Literal["stay", "rollback"] = "stay"
    #: Webhook checks at named points of the rollout (docs/gates.md).
    checks: list[CheckSpec] = Field(default_factory=list, max_length=20)
    #: Strategy `ab` only (refused with any other strategy): the rules that send requests to the canary.
    ab: AbSettings | None = None
    #: Strategy `rolling` only (refused with any other strategy): how many servers each batch upgrades.
    rolling: RollingSettings | None = None
    #: Strategy `mirror` only (refused with any other strategy): the share of requests copied to the canary.
    mirror: MirrorSettings | None = None
    #: Strategy `blue_green` only (refused with any other strategy): test traffic and how long blue stays.
    blue_green: BlueGreenSettings | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _deprecated_names(cls, data: Any, handler: ModelWrapValidatorHandler[CanaryConfig]) -> CanaryConfig:
        """`dry_run` (a bool) is read as `analysis` ("observe" when true); the model remembers it was used."""
        used = isinstance(data, dict) and "dry_run" in data
        if used:
            data = _dry_run_as_analysis(data)
        config = handler(data)
        if used:
            config._deprecated = ("dry_run",)
        return config

    _deprecated: tuple[str, ...] = PrivateAttr(default=())

    @property
    def deprecated_names(self) -> tuple[str, ...]:
        """Deprecated setting names this configuration was given (read as their new names)."""
        return self._deprecated

    @property
    def observe_only(self) -> bool:
        """The judge's verdicts are recorded, never acted on (`analysis: observe`)."""
        return self.analysis == "observe"

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
        minimum = (info.context or {}).get("min_stage_duration", 1)
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

    #: Whether the rules between fields apply. A part of the settings (CanaryConfigOverrides, see
    #: domain/defaults.py) leaves them to the merged result, as the other field may come from elsewhere.
    checks_relations: ClassVar[bool] = True

    @model_validator(mode="after")
    def _relations(self) -> CanaryConfig:
        """The rules between fields, every broken one reported at once."""
        if not self.checks_relations:
            return self
        problems = [
            *self._prometheus_source(),
            *self._approvals_name_later_stages(),
            *self._checks_fit_the_plan(),
            *self._interval_fits_stage(),
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _prometheus_source(self) -> list[str]:
        if self.metrics_source == "prometheus" and self.prometheus is None:
            return ["metrics_source 'prometheus' needs the prometheus settings (url, queries)"]
        return []

    def _approvals_name_later_stages(self) -> list[str]:
        unknown = [f"{p:g}" for p in self.approve_before if p not in self.stages[1:]]
        if unknown:
            return [
                f"approve_before names {', '.join(unknown)}, which is not a stage after the first; "
                "it must list percentages of later stages"
            ]
        return []

    def _checks_fit_the_plan(self) -> list[str]:
        problems = []
        names = [c.name for c in self.checks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(f"check names must be unique; repeated: {', '.join(repeated)}")
        for check in self.checks:
            unknown = [f"{p:g}" for p in check.stages or () if p not in self.stages]
            if unknown:
                problems.append(
                    f"check {check.name}: stages names {', '.join(unknown)}, which is not a stage"
                )
        return problems

    def _interval_fits_stage(self) -> list[str]:
        if self.health_check_interval > self.stage_duration:
            return ["health_check_interval must not be longer than stage_duration"]
        return []


__all__ = [
    "GATE_POINTS",
    "PROMQL_PLACEHOLDERS",
    "REDACTED",
    "AbRule",
    "AbSettings",
    "CanaryConfig",
    "CheckSpec",
    "Command",
    "FilePath",
    "HealthPath",
    "Host",
    "Listen",
    "MirrorSettings",
    "Name",
    "PrometheusQueries",
    "PrometheusSource",
    "ProxySpec",
    "RollingSettings",
    "ServersTransport",
    "UserName",
    "Version",
]


# --- What /docs says about each setting ----------------------------------------------------------------------
# Kept in one table (meaning, unit) so that the field definitions above stay short; applied to the models'
# JSON schema below, with the default. It changes no validation. A field missing here fails
# tests/api/test_openapi.py, so a new setting cannot go undocumented.

FIELD_DOCS: dict[str, dict[str, tuple[str, str]]] = {
    "CanaryConfig": {
        "stages": (
            "The canary's share of requests at each stage, increasing, each in (0, 100]; at most 50.",
            "percent",
        ),
        "stage_duration": (
            "How long each stage runs before it may advance; at least CANARYD_MIN_STAGE_DURATION (60).",
            "seconds",
        ),
        "error_rate_threshold": (
            "Threshold judge: roll back when the canary's error rate exceeds stable's by more than this. Sequential judge: the size of regression a pass must have been able to catch.",
            "percentage points",
        ),
        "latency_threshold": (
            "Threshold judge: roll back when the canary's p95 exceeds stable's by more than this percentage (and by latency_min_difference_ms).",
            "percent",
        ),
        "latency_min_difference_ms": (
            "Below this absolute p95 difference latency is never judged worse; the sequential judge's slow-request threshold is stable's p95 plus this.",
            "milliseconds",
        ),
        "canary_server_percentage": (
            "Share of the application's servers that become canaries (at least 1, at most half).",
            "percent",
        ),
        "health_check_interval": (
            "Time from the start of one check (health endpoints, traffic, judge) to the start of the next.",
            "seconds",
        ),
        "max_failed_health_checks": (
            "Consecutive failed health checks of a canary instance that roll back.",
            "checks",
        ),
        "min_requests": (
            "Threshold judge: requests per cohort and stage before it decides anything.",
            "requests",
        ),
        "deploy_timeout": ("Time allowed for one server's deploy command plus its health gate.", "seconds"),
        "judge": (
            "`sequential` (always-valid test on error and slow-request counts, docs/judge.md) or `threshold` (the spec's rules).",
            "one of the listed values",
        ),
        "alpha": (
            "Sequential judge: the false-rollback budget of the whole rollout, shared by the metrics.",
            "probability",
        ),
        "bucket_seconds": (
            "Sequential judge: length of the time buckets errors are counted in; a burst shorter than this counts as one bucket's worth of evidence.",
            "seconds",
        ),
        "bucket_max_evidence": (
            "Sequential judge: the most one time bucket can multiply a comparison's e-value by, so one bad minute on one server cannot roll back.",
            "factor",
        ),
        "stage_end_alpha": (
            "Sequential judge: false-rollback rate of the fixed-sample look at the end of each comparing stage (0 turns it off).",
            "probability",
        ),
        "stage_end_alpha_independent": (
            "Sequential judge: false-rollback rate of the stage-end look when neither cohort's time buckets show over-dispersion (then an exact test of every canary event, without burst caps, at the level calibrated to this rate at the stage's traffic).",
            "probability",
        ),
        "burst_allowance": (
            "Sequential judge: at the stage-end look, the most a bucket's canary events count above what its requests would give.",
            "standard deviations",
        ),
        "error_rate_margin": (
            "Sequential judge: fail only when the canary's error rate is at least this multiple of stable's.",
            "ratio",
        ),
        "latency_margin": ("Sequential judge: the same margin for the share of slow requests.", "ratio"),
        "sequential_k": ("Sequential judge: prior concentration of the mixture test.", "dimensionless"),
        "detect_ratio": (
            "Sequential judge: a pass needs enough requests to have caught a canary at this multiple of stable's rate (and detect_min_increase above it).",
            "ratio",
        ),
        "detect_min_increase": (
            "A pass needs enough requests to have caught a canary this much above stable (and at detect_ratio × it).",
            "percentage points",
        ),
        "power": (
            "Sequential judge: probability with which a pass must have been able to catch that regression.",
            "probability",
        ),
        "latency_tail_ms": (
            "Sequential judge: count requests slower than this; null = stable's p95 + latency_min_difference_ms.",
            "milliseconds",
        ),
        "error_rate_ceiling": (
            "An absolute error-rate ceiling on the canary alone (a guard); null = not checked.",
            "percent",
        ),
        "latency_ceiling_ms": (
            "An absolute latency ceiling on the canary alone (a guard); null = not checked.",
            "milliseconds",
        ),
        "latency_ceiling_quantile": ("The quantile latency_ceiling_ms applies to.", "quantile (0.5–1)"),
        "cpu_tolerance": (
            "Canary mean CPU above stable mean by more than this holds the stage (never rolls back); null = not compared.",
            "percentage points",
        ),
        "memory_tolerance": ("The same for memory use.", "percentage points"),
        "inconclusive_timeout": (
            "How long past its duration an inconclusive stage waits for evidence; null = one more stage_duration.",
            "seconds",
        ),
        "inconclusive_action": (
            "What a stage still inconclusive after inconclusive_timeout does: `proceed` (never into promotion or a 100 % stage), `pause` or `rollback`.",
            "one of the listed values",
        ),
        "analysis": (
            "`enforce`: the judge's verdicts act (hold a stage, roll back). `observe`: verdicts are recorded with what they would have done, never acted on: stages advance on their clock and the new version is promoted to every server. `dry_run: true` is the deprecated name of `observe`.",
            "one of the listed values",
        ),
        "metrics_source": (
            "Where traffic figures come from: `proxy` (its log or counters) or `prometheus`.",
            "one of the listed values",
        ),
        "prometheus": ("The Prometheus source, required when metrics_source is `prometheus`.", "object"),
        "source_failure_limit": (
            "Consecutive failed reads of the metric source before source_failure_action.",
            "reads",
        ),
        "source_failure_action": (
            "What repeated metric-source failures do: `pause`, `rollback`, or fall back to the `proxy`.",
            "one of the listed values",
        ),
        "approve_before": (
            "Stage percentages whose start waits for a person (resume, or promote to next); meanwhile the previous stage's split is held and still judged.",
            "percent of requests, each a stage after the first",
        ),
        "approval_timeout": (
            "How long a stage waits for approval before approval_timeout_action; null waits indefinitely.",
            "seconds",
        ),
        "approval_timeout_action": (
            "What an approval that did not come in time does: `stay` (keep waiting) or `rollback`.",
            "one of the listed values",
        ),
        "checks": (
            "Webhook checks called at named points (pre_deploy, pre_stage, during_stage, pre_promote, post_rollback); see CheckSpec and docs/gates.md.",
            "list of objects, at most 20",
        ),
        "ab": (
            'Strategy ab only (refused with any other strategy): {"match": [{"header"|"cookie": name, "equals"|"regex": value}, ...]}, 1 to 10 rules, any of which sends a request to the canary servers; every other request goes to stable. The test runs one stage of stage_duration; see docs/strategies.md.',
            "object",
        ),
        "rolling": (
            'Strategy rolling only (refused with any other strategy): {"batch_size": servers} or {"batch_percent": percent of the servers, rounded down, at least 1}; omitted: 25 %. Each batch is drained, deployed, health-gated, returned and judged for stage_duration against the servers not yet upgraded before the next one; at least one server always serves. See docs/strategies.md.',
            "object",
        ),
        "mirror": (
            'Strategy mirror only (refused with any other strategy): {"percent": 1-100, "then": "canary"|"stop"|"blue_green"}. A copy of percent % of live requests goes to the canary servers while every client gets stable\'s answer; the judge compares the canary\'s answers to the copies with stable\'s. After a mirror phase of stage_duration that passed, `canary` goes on with the canary stages, `stop` ends without promoting (rolled_back), `blue_green` (the copies went to green instances started beside blue on the application\'s green_port) goes on with a blue-green test and switch (settings in blue_green); see docs/strategies.md.',
            "object",
        ),
        "blue_green": (
            'Strategy blue_green, or mirror with then: blue_green (refused with any other): {"test_match": [{"header"|"cookie": name, "equals"|"regex": value}, ...], "keep_old": seconds}. The new (green) instance starts on the application\'s green_port of every server; while tested, only requests matching a test_match rule (default X-Canary: always) reach it; then all traffic switches at once and the old (blue) instances keep running keep_old seconds (default 300) for an instant switch back; see docs/strategies.md.',
            "object",
        ),
    },
    "CheckSpec": {
        "name": ("The check's name, unique in the deployment; shown in reasons and events.", "name"),
        "point": (
            "When it is called: `pre_deploy` (before the first canary server is deployed), `pre_stage` (before each stage starts), `during_stage` (once when each stage has started), `pre_promote` (before promotion), `post_rollback` (after a rollback). pre_deploy, pre_stage and pre_promote are gates: canaryd goes on only after a 2xx answer.",
            "one of the listed values",
        ),
        "url": (
            "Where canaryd POSTs the check's JSON body (the deployment's status, the point and the stage).",
            "http(s) URL",
        ),
        "timeout": ("How long one call may take before it counts as refused; at most 30.", "seconds"),
        "retries": (
            "Gates: refusals tried again at the next check interval before failure_action applies. during_stage and post_rollback: further tries at once, a second apart.",
            "tries",
        ),
        "retry_timeout": (
            "Gates: time after the first refusal after which failure_action applies even with retries left; null = only retries count.",
            "seconds",
        ),
        "failure_action": (
            "What a check still refusing after its retries does: `hold` (keep holding, try again each check interval), `pause`, `rollback` or `ignore` (go on); null = hold at gates, ignore for during_stage and post_rollback.",
            "one of the listed values",
        ),
        "stages": (
            "pre_stage and during_stage only: the stage percentages the check applies to; null = every stage.",
            "percent of requests",
        ),
        "secret": (
            "When set, each call carries X-Canaryd-Signature: sha256=<hex HMAC-SHA256(secret, body)>. Write-only: statuses and events show [redacted].",
            "text, 8 to 256 characters",
        ),
    },
    "ProxySpec": {
        "kind": ("The proxy in front of the application.", "one of the listed values"),
        "servers_transport": (
            "Traefik only: settings of the connections to the servers (a validated serversTransport block, e.g. keep-alive and timeouts).",
            "object",
        ),
        "server_id": (
            "The registered server the proxy runs on (commands and files go over its transport).",
            "server id",
        ),
        "config_path": (
            "The file canaryd owns: nginx include, HAProxy backend file, or Traefik dynamic configuration.",
            "absolute path",
        ),
        "reload_command": (
            "Command that makes the proxy load the file (e.g. `nginx -s reload`).",
            "shell command",
        ),
        "test_command": (
            "Command that checks the file before reload (e.g. `nginx -t`); null = none.",
            "shell command",
        ),
        "listen": (
            "nginx/HAProxy: where the application's front end listens; null = the operator's own server block routes to the upstream.",
            "port, ipv4:port or [ipv6]:port",
        ),
        "access_log": ("nginx: the JSON access log canaryd reads traffic from.", "absolute path"),
        "runtime_socket": (
            "HAProxy: the admin `stats socket` weights are changed through (required for HAProxy).",
            "absolute path",
        ),
        "max_weight": (
            "Largest per-server weight canaryd writes; null = 1000 (nginx, Traefik) or 256 (HAProxy).",
            "weight",
        ),
        "upstream_keepalive": (
            "nginx: idle keep-alive connections to the app per worker; 0 = a new connection per request.",
            "connections",
        ),
        "sticky": ("Cookie stickiness: a client keeps the cohort it first got, within a stage.", "boolean"),
        "force_header": (
            "A request header that forces a cohort: value `always` (canary) or `never` (stable); null = off.",
            "header name",
        ),
        "api_url": ("Traefik: its read-only API, to confirm the weights it loaded.", "http(s) URL"),
        "metrics_url": ("Traefik: its Prometheus metrics, to observe traffic.", "http(s) URL"),
        "provider": (
            "Traefik: `file` (canaryd writes config_path) or `http` (Traefik polls canaryd).",
            "one of the listed values",
        ),
        "router_rule": (
            "Traefik: the rule of the application's router, owned by canaryd when set.",
            "Traefik rule",
        ),
    },
    "PrometheusSource": {
        "url": ("Prometheus's base URL.", "http(s) URL"),
        "timeout": ("Timeout of one query.", "seconds"),
        "queries": ("PromQL templates for requests, errors and latency buckets.", "object"),
        "min_window": ("Until a stage has run this long, the proxy's figures are judged instead.", "seconds"),
    },
    "PrometheusQueries": {
        "requests": (
            "PromQL: requests of a cohort over $window ($instances, $window, $cohort, $version).",
            "PromQL template",
        ),
        "errors": ("PromQL: 5xx answers of a cohort over $window.", "PromQL template"),
        "latency_buckets": ("PromQL: cumulative latency buckets by `le` (seconds).", "PromQL template"),
    },
}


def _document_fields() -> None:
    models: dict[str, type[BaseModel]] = {
        "CanaryConfig": CanaryConfig,
        "CheckSpec": CheckSpec,
        "ProxySpec": ProxySpec,
        "PrometheusSource": PrometheusSource,
        "PrometheusQueries": PrometheusQueries,
    }
    for model_name, docs in FIELD_DOCS.items():
        model = models[model_name]
        for name, field in model.model_fields.items():
            if name not in docs:
                continue  # reported by tests/api/test_openapi.py
            meaning, unit = docs[name]
            if field.is_required():
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                if isinstance(value, BaseModel):
                    value = "see its fields"
                default = (
                    "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
                )
            field.description = f"{meaning} Unit: {unit}. Default: {default}."
            if (model_name, name) == ("CanaryConfig", "stages"):
                field.json_schema_extra = {"maxItems": 50}  # enforced by CanaryConfig._stages
        model.model_rebuild(force=True)
    PrometheusSource.model_rebuild(force=True)
    CheckSpec.model_rebuild(force=True)
    CanaryConfig.model_rebuild(force=True)


_document_fields()
