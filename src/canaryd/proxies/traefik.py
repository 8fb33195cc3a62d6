"""Traefik v3: weighted services in the dynamic configuration, confirmed through Traefik's own API.

No Traefik binary can be installed where canaryd is developed, so this adapter is tested against Traefik's
published JSON Schema for dynamic configuration and against API and metrics responses written by hand in
Traefik's documented formats (tests/proxies/traefik_recorded/). The rules it keeps:

* canaryd owns one dynamic-configuration file per application (`ProxySpec.config_path`, ending in `.yml`;
  JSON is valid YAML, so the file is JSON). It holds one load-balancer service per server
  (`canaryd-app-<id>-server-<server_id>`), the weighted service `canaryd-app-<id>` over them whose integer
  weights are the domain's split weights, unchanged, and, when `router_rule` is set, the router. A server
  that must get no traffic is absent (Traefik's WRR needs every child to exist). Per-server services also
  give per-server request metrics: Traefik reports metrics per *service*, never per server.
* With `sticky`, the weighted service sets `sticky.cookie` (`canaryd_<id>`, as on nginx and HAProxy): a
  client stays on the server it first got while that server is in the pool. With `force_header` (needs `router_rule`), two more
  routers with a higher priority send `Header(`<name>`, `always`)` to the canary cohort's weighted service
  and `never` to the stable one; a router is left out while its cohort has no server.
* Provider "file": the file is written to a temp name that Traefik's directory watch ignores (it reads only
  `.yml`, `.yaml` and `.toml`) and renamed over the live file; `reload_command` runs after (`true` when
  Traefik watches the directory, its default); if it fails the previous bytes are put back. Provider
  "http": the same file is the *published* copy that `GET /api/v1/traefik/<id>/config` serves to Traefik's
  HTTP provider. It must be written before verification, because the database records a configuration only
  once the proxy was seen serving it.
* Traefik has no test command. Every configuration is checked structurally here before it is written (and
  against the JSON Schema in the tests). Values reaching it were validated by pydantic and are checked again.
* `verify` polls `GET {api_url}/api/http/services/canaryd-app-<id>@<provider>` until the weights (and the
  sticky cookie) are those of the table: Traefik reloads asynchronously (file watch or HTTP poll, then
  `providersThrottleDuration`, 2 s by default).
* `read_traffic` scrapes `metrics_url` (Prometheus text): `traefik_service_requests_total` and
  `traefik_service_request_duration_seconds_bucket` per server service, as cumulative counters. The offset
  names a snapshot of those counters kept in a small JSON file beside `config_path` (the last few, so a tick
  that read but did not commit can read again from the same offset); a reading is the difference between
  now and that snapshot, a counter that went down (Traefik restarted) counts from zero. Latency resolution is
  that of Traefik's histogram buckets (default 0.1, 0.3, 1.2, 5 s): each request is counted at its bucket's
  upper edge, so percentiles are upper bounds. Configure finer `metrics.prometheus.buckets` in Traefik.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from canaryd.domain.config import ProxySpec, validate_traefik_rule
from canaryd.domain.types import Backend, Cohort, CohortStats, bucket_of
from canaryd.proxies.base import ProxyConfigError, ProxyUnavailableError, RouteTable, TrafficReading
from canaryd.proxies.checks import check_int
from canaryd.proxies.files import sibling_path, temp_path
from canaryd.proxies.nginx import format_address
from canaryd.transports.base import Transport, TransportError

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0
#: Snapshots of the counters kept in the traffic state file.
KEPT_SNAPSHOTS = 16
#: Routers canaryd renders for forced routing outrank the application's router (Traefik's default priority is
#: the rule's length, so these use a fixed, large one).
FORCE_PRIORITY = 100_000
MAX_METRICS_BYTES = 64 * 1024 * 1024

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
        services[name] = {"loadBalancer": {"servers": [{"url": f"http://{address}"}], "passHostHeader": True}}
        children.append((name, b.weight))
        by_cohort[b.cohort].append((name, b.weight))
    main = service_name(app_id)
    services[main] = _weighted(children, sticky)
    http: dict[str, Any] = {"services": services}
    if spec.router_rule is not None:
        rule = validate_traefik_rule(spec.router_rule)
        routers: dict[str, Any] = {main: {"rule": rule, "service": main}}
        if spec.force_header is not None:
            header = spec.force_header
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", header):
                raise ValueError(f"force_header {header[:80]!r} is not a header name")
            forced: tuple[tuple[Cohort, str], ...] = (("canary", "always"), ("stable", "never"))
            for cohort, value in forced:
                members = by_cohort[cohort]
                if not members:
                    continue  # nothing to force to: the request follows the split
                target = cohort_service_name(app_id, cohort)
                services[target] = _weighted(members, sticky)
                routers[f"{main}-force-{cohort}"] = {
                    "rule": f"({rule}) && Header(`{header}`, `{value}`)",
                    "service": target,
                    "priority": FORCE_PRIORITY,
                }
        http["routers"] = routers
    config = {"http": http}
    check_dynamic_config(config)
    return config


def check_dynamic_config(config: object) -> None:
    """A structural check of what canaryd writes (Traefik has no test command): the shape the file
    provider accepts, every weighted child defined, every router's service defined. Raises ValueError."""
    if not isinstance(config, dict) or set(config) != {"http"} or not isinstance(config["http"], dict):
        raise ValueError("the configuration must be an object with exactly one key, 'http'")
    http = config["http"]
    if not set(http) <= {"services", "routers"}:
        raise ValueError(f"unexpected keys in 'http': {sorted(set(http) - {'services', 'routers'})}")
    services = http.get("services")
    if not isinstance(services, dict) or not services:
        raise ValueError("'http.services' must be a non-empty object")
    for name, service in services.items():
        if not isinstance(service, dict) or len(service) != 1:
            raise ValueError(f"service {name!r} must have exactly one kind")
        if "loadBalancer" in service:
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
        else:
            raise ValueError(f"service {name!r} is neither a loadBalancer nor weighted")
    for name, router in (http.get("routers") or {}).items():
        if not isinstance(router, dict) or router.get("service") not in services:
            raise ValueError(f"router {name!r} points to an undefined service")
        if not isinstance(router.get("rule"), str) or not router["rule"]:
            raise ValueError(f"router {name!r} has no rule")


def dump_config(config: dict[str, Any]) -> bytes:
    """The file's bytes: JSON (valid YAML), sorted and indented so diffs read well."""
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def expected_weights(table: RouteTable) -> dict[str, int]:
    """What Traefik must report for the weighted service: child service → weight."""
    return {server_service_name(table.app_id, b.server_id): b.weight for b in table.backends}


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


def table_from_applied(app_id: int, app_name: str, applied: list[Any], generation: int) -> RouteTable:
    """The route table the database records as applied (`Application.proxy_applied`)."""
    backends = tuple(
        Backend(int(b["server_id"]), str(b["host"]), int(b["port"]), int(b["weight"]), b["cohort"])
        for b in applied
    )
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
class Counters:
    """Cumulative counters of one Traefik service: requests, 5xx answers, latency histogram by `le`."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "buckets": self.buckets}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counters:
        return cls(
            float(data["requests"]),
            float(data["errors"]),
            {str(k): float(v) for k, v in data["buckets"].items()},
        )


def service_counters(text: str, app_id: int) -> dict[str, Counters]:
    """Per server service of `app_id` (name without `@provider`), summed over code, method and protocol."""
    out: dict[str, Counters] = {}
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
        c = out.setdefault(name, Counters())
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


def counters_delta(now: Counters, before: Counters | None) -> Counters:
    """What happened between two readings; a counter that went down was reset (Traefik restarted)."""
    if before is None or now.requests < before.requests:
        return now
    buckets = {}
    for le, n in now.buckets.items():
        prev = before.buckets.get(le, 0.0)
        buckets[le] = n if n < prev else n - prev
    return Counters(now.requests - before.requests, max(0.0, now.errors - before.errors), buckets)


def to_cohort_stats(delta: Counters) -> CohortStats:
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

#: One apply at a time per file within a process (the engine's per-deployment lock does the rest).
_apply_locks: dict[tuple[int, int, str], asyncio.Lock] = {}


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
        poll_interval: float = 0.25,
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

    @property
    def state_path(self) -> str:
        """The traffic snapshots, beside the config file, under a name Traefik's directory watch ignores."""
        return sibling_path(self.spec.config_path, "traffic.json")

    def _temp_path(self) -> str:
        return temp_path(self.spec.config_path)

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
        key = (id(asyncio.get_running_loop()), self.spec.server_id, self.spec.config_path)
        async with _apply_locks.setdefault(key, asyncio.Lock()):
            try:
                await self._install(data)
            except TransportError as exc:
                raise ProxyUnavailableError(f"Traefik configuration on {self.proxy_host}: {exc}") from exc

    async def _install(self, data: bytes) -> None:
        path = self.spec.config_path
        previous = (
            await self.transport.read_file(path) if await self.transport.file_size(path) is not None else None
        )
        if previous == data:
            return  # already in place: nothing for Traefik to reload
        await self._write_atomically(path, data)
        try:
            result = await self.transport.run(self.spec.reload_command, timeout=COMMAND_TIMEOUT)
            if not result.ok:
                raise ProxyConfigError(f"reload_command failed (exit {result.exit_status}): {result.tail()}")
        except BaseException:
            if previous is None:
                await self.transport.remove(path)
            else:
                await self._write_atomically(path, previous)
            raise

    async def _write_atomically(self, path: str, data: bytes) -> None:
        temp = self._temp_path()
        try:
            await self.transport.write_file(temp, data)
            await self.transport.rename(temp, path)
        except BaseException:
            await self.transport.remove(temp)
            raise

    # verify --------------------------------------------------------------------------------------------
    async def _loaded(self, table: RouteTable, timeout: float) -> bool:
        try:
            response = await self.http.get(self.service_url(table.app_id), timeout=max(0.1, timeout))
        except httpx.HTTPError as exc:
            logger.debug("Traefik API %s: %s", self.spec.api_url, exc)
            return False
        if response.status_code != 200:  # 404 until Traefik has loaded the service
            return False
        try:
            return serves(response.json(), table, self.spec)
        except ValueError:
            return False

    async def verify(self, table: RouteTable) -> bool:
        """True once Traefik's API reports the weights of `table`; False after `verify_timeout`."""
        deadline = time.monotonic() + self.verify_timeout
        while True:
            remaining = deadline - time.monotonic()
            if await self._loaded(table, min(2.0, remaining)):
                return True
            if time.monotonic() + self.poll_interval > deadline:
                return False
            await asyncio.sleep(self.poll_interval)

    async def check(self, table: RouteTable) -> bool:
        """One look at Traefik's API: does it still serve `table`'s weights?"""
        return await self._loaded(table, 2.0)

    # read_traffic --------------------------------------------------------------------------------------
    async def _scrape(self, app_id: int) -> dict[str, Counters]:
        assert self.spec.metrics_url is not None
        try:
            response = await self.http.get(self.spec.metrics_url, timeout=5.0)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ProxyUnavailableError(f"Traefik metrics {self.spec.metrics_url}: {exc}") from exc
        if len(response.content) > MAX_METRICS_BYTES:
            raise ProxyUnavailableError(f"Traefik metrics {self.spec.metrics_url}: response too large")
        return service_counters(response.text, app_id)

    async def _read_json(self, path: str) -> Any:
        if await self.transport.file_size(path) is None:
            return None
        try:
            return json.loads(await self.transport.read_file(path))
        except ValueError:
            logger.warning("%s on %s is not JSON; ignoring it", path, self.proxy_host)
            return None

    async def _published(self) -> tuple[int, dict[str, str]]:
        """The application id and server service → `host:port`, from the file canaryd wrote (read_traffic
        is handed no route table)."""
        config = await self._read_json(self.spec.config_path)
        try:
            check_dynamic_config(config)
        except ValueError as exc:
            raise ProxyUnavailableError(f"{self.spec.config_path} on {self.proxy_host}: {exc}") from exc
        assert isinstance(config, dict)
        app_id: int | None = None
        out: dict[str, str] = {}
        for name, service in config["http"]["services"].items():
            m = _SERVER_SERVICE.fullmatch(name)
            if m is not None:
                app_id = int(m.group(1))
                out[name] = service["loadBalancer"]["servers"][0]["url"].removeprefix("http://").rstrip("/")
        if app_id is None:
            raise ProxyUnavailableError(f"{self.spec.config_path} names no canaryd server service")
        return app_id, out

    async def _load_state(self) -> dict[str, Any]:
        state = await self._read_json(self.state_path)
        if not isinstance(state, dict) or not isinstance(state.get("snapshots"), list):
            return {"snapshots": [], "addresses": {}}
        return state

    async def _snapshot(self, state: dict[str, Any], counters: dict[str, Counters]) -> int:
        ids = [int(s["id"]) for s in state["snapshots"]]
        new_id = max(ids, default=0) + 1
        state["snapshots"] = [
            *state["snapshots"][-(KEPT_SNAPSHOTS - 1) :],
            {"id": new_id, "counters": {k: v.to_json() for k, v in counters.items()}},
        ]
        await self._write_atomically(self.state_path, json.dumps(state, sort_keys=True).encode())
        return new_id

    async def traffic_offset(self) -> int:
        """Takes a snapshot of Traefik's counters now; its id is the offset."""
        try:
            app_id, addresses = await self._published()
            state = await self._load_state()
            state["addresses"] = {**state.get("addresses", {}), **addresses}
            return await self._snapshot(state, await self._scrape(app_id))
        except TransportError as exc:
            raise ProxyUnavailableError(f"Traefik traffic state on {self.proxy_host}: {exc}") from exc

    async def read_traffic(
        self,
        offset: int,
        cohort_of: Callable[[str], Cohort | None],
        since: float
        | None = None,  # counters carry no timestamps: a stage's first read may hold a little earlier traffic
    ) -> TrafficReading:
        """Per-cohort requests since the snapshot `offset`, from Traefik's cumulative counters. An unknown
        offset (the state file was lost) reads as no traffic and starts a new snapshot."""
        try:
            app_id, addresses = await self._published()
            state = await self._load_state()
            known: dict[str, str] = {**state.get("addresses", {}), **addresses}
            state["addresses"] = known
            now = await self._scrape(app_id)
            base = next((s for s in state["snapshots"] if int(s["id"]) == offset), None)
            cohorts: dict[Cohort, CohortStats] = {"canary": CohortStats(), "stable": CohortStats()}
            if base is None:
                logger.warning(
                    "no Traefik counter snapshot %d in %s: starting a new one", offset, self.state_path
                )
            else:
                before = {k: Counters.from_json(v) for k, v in base["counters"].items()}
                for name, counters in now.items():
                    cohort = self._cohort(known.get(name), cohort_of)
                    if cohort is None:
                        continue
                    cohorts[cohort] = cohorts[cohort].merge(
                        to_cohort_stats(counters_delta(counters, before.get(name)))
                    )
            return TrafficReading(cohorts, await self._snapshot(state, now))
        except TransportError as exc:
            raise ProxyUnavailableError(f"Traefik traffic state on {self.proxy_host}: {exc}") from exc

    @staticmethod
    def _cohort(address: str | None, cohort_of: Callable[[str], Cohort | None]) -> Cohort | None:
        if address is None:
            return None
        cohort = cohort_of(address)
        if cohort is None and address.startswith("["):  # also accept "::1:8080" for "[::1]:8080"
            host, _, port = address[1:].rpartition("]:")
            cohort = cohort_of(f"{host}:{port}")
        return cohort


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


__all__ = [
    "TraefikProxy",
    "check_dynamic_config",
    "counters_delta",
    "dump_config",
    "expected_weights",
    "loaded_weights",
    "parse_prometheus_text",
    "published_config",
    "render_traefik",
    "service_counters",
    "service_name",
    "to_cohort_stats",
]
