"""HAProxy: one file per application, weights changed through the runtime API without a reload.

The rules this adapter keeps:

* canaryd owns exactly one file per application (`ProxySpec.config_path`, e.g. `conf.d/app.cfg`, loaded by
  `haproxy -f haproxy.cfg -f conf.d/`, which reads only `*.cfg` files that do not start with a dot). It holds
  `backend canaryd_app_<id>` and, when `listen` is set, `frontend canaryd_fe_<id>`. The operator's own
  `global` section declares the admin socket (`stats socket PATH level admin`) named by `runtime_socket`.
* **Servers stay declared.** A server that must get no traffic is written as `weight 0` instead of being
  left out (HAProxy, unlike nginx, accepts weight 0 and `balance roundrobin` sends it nothing). Servers of the
  previous file that the route table no longer lists are kept at weight 0 too. So once an application is
  registered (every server at weight 1), draining a canary, giving it its share and promoting never change
  the set of servers, and every later change is a pure weight change that the runtime API (`set weight`)
  makes live in milliseconds *without a reload* — a reload closes idle keep-alive client connections and
  costs the requests that race with that. The price: a server removed from an application stays declared at
  weight 0 until the next change that needs a reload anyway.
* `sticky`: HAProxy's cookie persistence (`cookie canaryd_<id>`, value `s<server_id>`) pins a client to the
  server that first answered it. HAProxy keeps sending pinned clients to a server at weight 0, so per server
  an `ignore-persist` on its live `srv_weight` drops the pin and the answer re-pins the client: a rollback cut
  stays a runtime weight change. `force_header`: backends `canaryd_app_<id>_canary` / `_stable` declare every
  server (the other cohort's at weight 0, set by the same runtime calls) and the frontend sends `always` /
  `never` there while that backend has a usable server (`nbsrv`), else the request follows the split.
* No active health checks (`check`): see `_BACKEND_HEAD` for why a restart under load came back at 0 %.
* `apply` renders the file and compares it with the previous one. When only weights differ, and the running
  HAProxy has exactly the declared servers (and, with `listen`, answers the frontend's marker), it sets the
  weights over the socket first (live within milliseconds: a rollback to 0 % must not wait for a test
  command), then installs the file (temp + rename, test command) so that a restart or reload keeps the
  split, and does not reload. If the test command refuses the file, the previous bytes and the previous
  weights are put back. Otherwise (new servers, a new or changed frontend, a fresh HAProxy without the
  backend) it installs, tests (previous bytes back on a failure) and runs the reload command.
* `verify` and `check` read the weights back (`show servers state`): every server of the table must have its
  weight and address, every other declared server weight 0. With `listen`, the frontend answers
  `/.canaryd/haproxy` with a fingerprint of its own rendered text, proving it is loaded as rendered. (A
  generation number there would be stale after weight-only changes, which load nothing.) After a restart
  from the same files both hold, so `check` stays True; a restart from an older file, or runtime weights
  changed behind canaryd's back, make it False and the engine re-asserts the table.
* Traffic: with `access_log`, HAProxy logs one JSON line per request (`log-format`, see `LOG_FORMAT`); it
  logs through syslog, so the operator's `global` has e.g. `log /dev/log local0` and rsyslog writes the
  message to that file (or HAProxy runs in the foreground with `log stdout format raw local0` and its
  standard output appended to the file). Offsets are byte offsets, as for nginx. Without `access_log` the
  per-server counters of `show stat` are used: requests (`stot`) and 5xx (`hrsp_5xx`) exactly, latency only
  as each server's average response time over its last 1024 requests (`rtime`), so the judge compares
  averages rather than p95s. Counters are cumulative, so a small state file beside `config_path`
  (`.<name>.canaryd-traffic.json`) keeps recent snapshots; the offset is a snapshot's sequence number and a
  reading is the difference to it. Counters restart at 0 with every HAProxy process (reload or restart):
  a new process id counts everything it has seen as new.
* Everything that reaches the file is checked again here (pydantic already did): whitespace, quotes, `#`,
  backslash, `%`, braces and control characters in a value raise ValueError.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from canaryd.domain.addresses import HEADER_NAME, format_address, parse_listen
from canaryd.domain.config import ProxySpec
from canaryd.domain.matching import equals_problems, name_problems, regex_problems
from canaryd.domain.types import Cohort, CohortStats, MatchRule, bucket_of, match_rules
from canaryd.proxies.base import ProxyConfigError, ProxyUnavailableError, RouteTable, TrafficReading
from canaryd.proxies.checks import check_int, logged_before, reject_syntax
from canaryd.proxies.files import file_lock, install, read_optional
from canaryd.proxies.logs import ParsedLog, SnapshotStore, cohort_lookup, log_size, no_traffic, tail
from canaryd.proxies.polling import poll_until
from canaryd.transports.base import Transport, TransportError

logger = logging.getLogger(__name__)

#: Path answered by the rendered frontend with the fingerprint of its own text.
MARKER_PATH = "/.canaryd/haproxy"
COMMAND_TIMEOUT = 30.0
#: Seconds into a verification after a reload at which the reload is sent again if HAProxy still serves the
#: previous configuration. HAProxy 2.6 drops a SIGUSR2 that arrives while its master is re-executing for the
#: previous one (measured: two reloads 10-30 ms apart lost the second in 19 of 20 tries), so two deployments
#: changing files of one HAProxy at once, or a restore right after a change, could leave the older file live.
#: Reloading again from the same files is harmless when the first one was merely slow.
RELOAD_RESENDS = (1.0, 2.5)
SOCKET_TIMEOUT = 5.0

#: One JSON object per request. %Ta: active time of the request in ms; %Tr: time until the server's response
#: headers in ms; %si:%sp: the server that answered ("-" when none did).
LOG_FORMAT = (
    '{"time":%Ts.%ms,"status":%ST,"request_time_ms":%Ta,"response_time_ms":%Tr,'
    '"upstream_addr":"%si:%sp","server":"%s","method":"%HM"}'
)

_FORBIDDEN = re.compile(r"[\s;{}#'\"`$%\\\x00-\x1f\x7f]")
_COMMENT_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_PATH = re.compile(r"/[A-Za-z0-9_./@+-]{0,1023}")
_SERVER_LINE = re.compile(r"^\s*server\s+s(\d+)\s+(\S+)\s", re.MULTILINE)
_WEIGHT = re.compile(r"\bweight \d+\b")
_SERVER_WEIGHT = re.compile(r"^\s*server\s+s(\d+)\s+\S+\s+weight\s+(\d+)\b")
#: The forced-routing header's values and the cohort each forces.
FORCED: tuple[tuple[str, Cohort], ...] = (("always", "canary"), ("never", "stable"))


# --- rendering (pure) -------------------------------------------------------------------------------------


def _reject_syntax(value: str, what: str) -> str:
    return reject_syntax(value, what, _FORBIDDEN, "HAProxy")


def _bind_address(listen: str) -> str:
    """`bind` argument for a `listen` value: `port`, `ipv4:port` or `[ipv6]:port` (domain/addresses.py)."""
    _reject_syntax(listen, "listen")
    host, port = parse_listen(listen)
    if host is None:
        return f":{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_path(value: str, what: str) -> str:
    _reject_syntax(value, what)
    if not _PATH.fullmatch(value):
        raise ValueError(f"{what} {value[:80]!r} must be an absolute path of letters, digits and _ . / @ + -")
    return value


def backend_name(app_id: int, cohort: Cohort | None = None) -> str:
    """`canaryd_app_<id>` (the weighted split), or a cohort's own backend `canaryd_app_<id>_<cohort>`."""
    name = f"canaryd_app_{check_int(app_id, 'app_id', 0)}"
    return name if cohort is None else f"{name}_{cohort}"


def cookie_name(app_id: int) -> str:
    """The stickiness cookie, named as on nginx and Traefik."""
    return f"canaryd_{check_int(app_id, 'app_id', 0)}"


def _check_header(name: str) -> str:
    _reject_syntax(name, "force_header")
    if not HEADER_NAME.fullmatch(name):
        raise ValueError(f"force_header {name[:80]!r} must be letters, digits and '-', at most 64")
    return name


def _rule_condition(rule: MatchRule) -> str:
    """An anonymous ACL for one A/B rule: `{ req.fhdr(X-Beta) -m str '1' }`, `{ req.cook(plan) -m reg 'p' }`.
    `req.fhdr`, not `req.hdr`: the latter splits values at commas, so a regex over a User-Agent would see
    pieces. Values go in single quotes, inside which HAProxy reads every character as itself (no escapes,
    no variables); domain/matching.py refused quotes, and everything is checked again here."""
    problems = name_problems(rule.source, rule.name)
    problems += equals_problems(rule.value) if rule.op == "equals" else regex_problems(rule.value)
    if problems or "'" in rule.value:
        raise ValueError(problems[0] if problems else "an A/B value must not contain a quote")
    fetch = f"req.fhdr({rule.name})" if rule.source == "header" else f"req.cook({rule.name})"
    return f"{{ {fetch} -m {'str' if rule.op == 'equals' else 'reg'} '{rule.value}' }}"


def _frontend(app_id: int, spec: ProxySpec, rules: tuple[MatchRule, ...] = ()) -> tuple[list[str], list[str]]:
    """The frontend section without its marker line (whose fingerprint covers these lines): the lines that
    go before the marker, and the routing lines after it (http-request rules must precede use_backend).
    The forced header comes first, then the A/B rules (any of them sends the request to the canary
    backend while it has a server), then the weighted split."""
    assert spec.listen is not None
    lines = [f"frontend canaryd_fe_{app_id}", f"    bind {_bind_address(spec.listen)}", "    mode http"]
    if spec.access_log is not None:
        _check_path(spec.access_log, "access_log")
        escaped = LOG_FORMAT.replace('"', '\\"')
        lines += ["    log global", f'    log-format "{escaped}"']
    lines.append(f"    http-request set-log-level silent if {{ path {MARKER_PATH} }}")
    routing = []
    if spec.force_header is not None:
        header = _check_header(spec.force_header)
        for value, cohort in FORCED:
            # An empty cohort (every server at weight 0) is not usable: the request follows the split.
            target = backend_name(app_id, cohort)
            routing.append(
                f"    use_backend {target} if {{ req.hdr({header}) -i {value} }} {{ nbsrv({target}) gt 0 }}"
            )
    canary = backend_name(app_id, "canary")
    routing += [f"    use_backend {canary} if {_rule_condition(r)} {{ nbsrv({canary}) gt 0 }}" for r in rules]
    routing.append(f"    default_backend {backend_name(app_id)}")
    return lines, routing


def frontend_fingerprint(app_id: int, spec: ProxySpec, rules: tuple[MatchRule, ...] = ()) -> str | None:
    """What the frontend answers on MARKER_PATH; None when canaryd renders no frontend."""
    if spec.listen is None:
        return None
    head, routing = _frontend(app_id, spec, rules)
    digest = hashlib.sha256("\n".join([*head, *routing]).encode()).hexdigest()
    return f"canaryd-fe-{app_id}-{digest[:16]}"


def render_haproxy(
    table: RouteTable, spec: ProxySpec, retained: Mapping[int, tuple[str, int]] | None = None
) -> str:
    """The whole file for one application. Pure; raises ValueError on any unsafe or impossible value.

    `retained` maps server ids of the previous file to (host, port): those not in `table` stay declared
    at weight 0, so that giving them traffic later is a runtime weight change, not a reload."""
    app_id = check_int(table.app_id, "app_id", 0)
    generation = check_int(table.generation, "generation", 0)
    if not any(b.weight > 0 for b in table.backends):
        raise ValueError("a route table needs at least one server with a weight above 0")
    comment_name = _COMMENT_SAFE.sub("_", str(table.app_name))[:63] or "_"

    rules = match_rules(table.backends)
    if any(b.mirror for b in table.backends):  # the API refuses strategy mirror here (docs/strategies.md)
        raise ValueError("canaryd cannot mirror requests on HAProxy")
    if rules and spec.listen is None:
        raise ValueError("A/B rules need listen: they route in canaryd's frontend")
    servers, bound = _declared_entries(table, spec, rules, retained)
    lines = [
        f"# managed by canaryd, generation {generation} - do not edit",
        f"# application {app_id} ({comment_name})",
    ]
    if spec.listen is not None:
        lines += ["", *_frontend_section(app_id, spec, rules)]
    lines += _backend_sections(app_id, spec, rules, servers, bound)
    return "\n".join(lines) + "\n"


#: One server line of the file: (address, weight, cohort or None when not in the pool, comment).
_Entry = tuple[str, int, Cohort | None, str]


def _declared_entries(
    table: RouteTable,
    spec: ProxySpec,
    rules: tuple[MatchRule, ...],
    retained: Mapping[int, tuple[str, int]] | None,
) -> tuple[list[tuple[int, _Entry]], set[int]]:
    """Every server the file declares, by server id: the table's (checked), then the retained ones whose id
    and address are still free (at weight 0, not in the pool); and the ids of the A/B rule-bound servers."""
    # An A/B rule-bound server's weight is its weight in the canary backend: it has none in the split.
    entries: dict[int, _Entry] = {}
    bound: set[int] = set()
    seen: set[str] = set()
    for b in table.backends:
        check_int(b.server_id, "server_id", 1)
        address = format_address(_reject_syntax(b.host, "host"), b.port)
        check_int(b.weight, f"weight of {address}", 0, spec.weight_limit)
        if b.cohort not in ("canary", "stable"):
            raise ValueError(f"server {b.server_id} has an unknown cohort {str(b.cohort)[:20]!r}")
        if b.server_id in entries or address in seen:
            raise ValueError(f"server {b.server_id} ({address}) appears twice in the route table")
        seen.add(address)
        if b.match:
            if b.match != rules or b.cohort != "canary":
                raise ValueError("A/B rules must be the same on every canary server, and on canaries only")
            bound.add(b.server_id)
        entries[b.server_id] = (address, b.weight, b.cohort, f"{b.cohort} server {b.server_id}")
    for server_id, (host, port) in (retained or {}).items():
        check_int(server_id, "server_id", 1)
        address = format_address(_reject_syntax(host, "host"), port)
        if server_id in entries or address in seen:
            continue
        seen.add(address)
        entries[server_id] = (address, 0, None, f"server {server_id}, not in the pool")
    return sorted(entries.items()), bound


def _frontend_section(app_id: int, spec: ProxySpec, rules: tuple[MatchRule, ...]) -> list[str]:
    """The frontend with its marker line, which answers the fingerprint of the frontend's other lines."""
    fingerprint = frontend_fingerprint(app_id, spec, rules)
    head, routing = _frontend(app_id, spec, rules)
    marker = (
        f"    http-request return status 200 content-type text/plain "
        f'string "{fingerprint}" if {{ path {MARKER_PATH} }}'
    )
    return [*head, marker, *routing]


def _backend_sections(
    app_id: int,
    spec: ProxySpec,
    rules: tuple[MatchRule, ...],
    servers: list[tuple[int, _Entry]],
    bound: set[int],
) -> list[str]:
    """The weighted backend (rule-bound servers at weight 0 there) and, with force_header or A/B rules, one
    backend per cohort; every backend declares every server."""
    lines = ["", f"backend {backend_name(app_id)}", *_BACKEND_HEAD]
    cookie = ""
    if spec.sticky:
        lines += _sticky_lines(app_id, [sid for sid, _ in servers])
        cookie = " cookie s{sid}"
    lines += [
        f"    server s{sid} {address} weight {0 if sid in bound else weight}{cookie.format(sid=sid)}  # {comment}"
        for sid, (address, weight, _, comment) in servers
    ]
    if spec.force_header is not None or rules:
        for cohort in ("canary", "stable"):
            # Same servers, the other cohort's (and the retained ones) at weight 0: stage changes stay
            # runtime weight changes.
            lines += ["", f"backend {backend_name(app_id, cohort)}", *_BACKEND_HEAD]
            lines += [
                f"    server s{sid} {address} weight {weight if c == cohort else 0}  # {comment}"
                for sid, (address, weight, c, comment) in servers
            ]
    return lines


_BACKEND_HEAD = (
    "    mode http",
    "    balance roundrobin",
    # No active health checks (`check`): canaryd checks the servers itself and sets their weights. HAProxy
    # starts every checked server at the lowest "up" health, so one check lost in the first seconds after a
    # start or reload (a loaded machine, an instance restarting) took that server out for rise x inter
    # (about 4 s): a restart mid-canary came back at 0 % canary. A refused connection (an instance going
    # away) is retried on another server instead, as nginx does with `max_fails=0`.
    "    retries 3",
    "    option redispatch 1",
)


def _sticky_lines(app_id: int, server_ids: Iterable[int]) -> list[str]:
    """Cookie persistence: HAProxy pins a new client to the server that answered it (cookie value
    `s<server_id>`). A server at weight 0 would still get its pinned clients, so for each server the cookie
    is ignored while its live weight is 0 and the client is pinned afresh to the server that answers."""
    main, cookie = backend_name(app_id), cookie_name(app_id)
    lines = [f"    cookie {cookie} insert indirect nocache httponly attr SameSite=Lax"]
    for sid in server_ids:
        check_int(sid, "server_id", 1)
        gone = f"{{ req.cook({cookie}) -m str s{sid} }} {{ srv_weight({main}/s{sid}) eq 0 }}"
        lines += [
            f"    ignore-persist if {gone}",
            f"    http-request set-var(txn.canaryd_repin) bool(true) if {gone}",
        ]
    # An ignored cookie makes HAProxy insert none: name the server that answered instead.
    lines.append(
        f'    http-response add-header Set-Cookie "{cookie}=%[srv_name]; path=/; HttpOnly; SameSite=Lax"'
        " if { var(txn.canaryd_repin) -m bool }"
    )
    return lines


def declared_servers(text: str) -> dict[int, tuple[str, int]]:
    """Server id -> (host, port) of the `server s<id> host:port` lines of a rendered file."""
    out: dict[int, tuple[str, int]] = {}
    for m in _SERVER_LINE.finditer(text):
        host, _, port = m.group(2).rpartition(":")
        with contextlib.suppress(ValueError):
            out[int(m.group(1))] = (host.strip("[]"), int(port))
    return out


def declared_weights(text: str) -> dict[str, dict[str, int]]:
    """Backend -> server name -> weight written in a rendered file."""
    out: dict[str, dict[str, int]] = {}
    backend: dict[str, int] | None = None
    for line in text.splitlines():
        if line.startswith("backend "):
            backend = out.setdefault(line.split()[1], {})
        elif line and not line[0].isspace():
            backend = None
        elif backend is not None and (m := _SERVER_WEIGHT.match(line)):
            backend[f"s{m.group(1)}"] = int(m.group(2))
    return out


def structure(text: str) -> list[str]:
    """The file with comments and weight values taken out: equal structures differ only in weights."""
    out = []
    for line in text.splitlines():
        line = _WEIGHT.sub("weight _", line.split("#", 1)[0]).rstrip()
        if line:
            out.append(line)
    return out


def expected_weights(
    table: RouteTable, declared: Iterable[int], cohort: Cohort | None = None
) -> dict[str, int]:
    """Server name -> weight the running HAProxy must have: the table's, and 0 for every other server. For a
    cohort's backend, servers of the other cohort get 0 too."""
    weights = {f"s{sid}": 0 for sid in declared}
    weights.update(
        {
            # A rule-bound (A/B) canary has weight only in the canary backend, none in the split.
            f"s{b.server_id}": b.weight if (cohort == b.cohort or (cohort is None and not b.match)) else 0
            for b in table.backends
        }
    )
    return weights


def all_expected_weights(
    table: RouteTable, declared: Iterable[int], spec: ProxySpec
) -> dict[str, dict[str, int]]:
    """Backend -> server name -> weight, for every backend of the file."""
    declared = list(declared)
    out = {backend_name(table.app_id): expected_weights(table, declared)}
    if spec.force_header is not None or match_rules(table.backends):
        for cohort in ("canary", "stable"):
            out[backend_name(table.app_id, cohort)] = expected_weights(table, declared, cohort)
    return out


# --- runtime API answers (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuntimeServer:
    name: str
    address: str  # as HAProxy resolved it
    port: int
    weight: int  # the current (user) weight


def parse_servers_state(text: str) -> dict[str, RuntimeServer] | None:
    """`show servers state <backend>`; None when HAProxy does not know the backend."""
    servers: dict[str, RuntimeServer] = {}
    header_seen = False
    for line in text.splitlines():
        if line.startswith("#"):
            header_seen = True
            continue
        parts = line.split()
        if len(parts) < 19 or not parts[0].isdigit():
            continue
        with contextlib.suppress(ValueError):
            servers[parts[3]] = RuntimeServer(parts[3], parts[4], int(parts[18]), int(parts[7]))
    if not header_seen and not servers:
        return None
    return servers


def runtime_matches(
    servers: Mapping[str, RuntimeServer] | None, table: RouteTable, cohort: Cohort | None = None
) -> bool:
    """Whether HAProxy routes exactly like `table`: each table server with its weight and address, every
    other server it knows in the backend at weight 0. With `cohort`: as that cohort's backend must."""
    if servers is None:
        return False
    want = expected_weights(table, (), cohort)
    for b in table.backends:
        s = servers.get(f"s{b.server_id}")
        if s is None or s.weight != want[s.name] or s.port != b.port or not _same_host(s.address, b.host):
            return False
    return all(s.weight == want.get(name, 0) for name, s in servers.items())


def _same_host(resolved: str, host: str) -> bool:
    try:
        return ipaddress.ip_address(resolved) == ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True  # a hostname: HAProxy shows what it resolved to, which canaryd cannot check here


@dataclass(frozen=True, slots=True)
class HaproxyCounters:
    requests: int
    errors: int
    rtime_ms: float


def parse_show_stat(text: str, backend: str) -> dict[str, HaproxyCounters]:
    """Per-server counters (keyed by the server's `host:port`) of `backend` from `show stat` CSV."""
    text = text.lstrip()
    if text.startswith("# "):
        text = text[2:]
    out: dict[str, HaproxyCounters] = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") != backend or row.get("svname") in (None, "FRONTEND", "BACKEND"):
            continue
        addr = row.get("addr") or ""
        try:
            out[addr] = HaproxyCounters(
                int(row.get("stot") or 0), int(row.get("hrsp_5xx") or 0), float(row.get("rtime") or 0)
            )
        except ValueError:
            continue
    return out


def parse_show_info_pid(text: str) -> int | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Pid":
            with contextlib.suppress(ValueError):
                return int(value.strip())
    return None


def counter_deltas(
    before: Mapping[str, HaproxyCounters] | None,
    after: Mapping[str, HaproxyCounters],
    same_process: bool,
    cohort_of: Callable[[str], Cohort | None],
) -> dict[Cohort, CohortStats]:
    """Per-cohort stats from two counter snapshots. Latency: every new request counted at the server's
    average response time (HAProxy keeps no percentiles). Counters of a new process start from 0."""
    cohorts = no_traffic()
    lookup = cohort_lookup(cohort_of)
    for addr, now in after.items():
        cohort = lookup(addr)
        if cohort is None:
            continue
        old = (before or {}).get(addr) if same_process else None
        requests, errors = now.requests, now.errors
        if old is not None and old.requests <= now.requests and old.errors <= now.errors:
            requests, errors = now.requests - old.requests, now.errors - old.errors
        if requests <= 0:
            continue
        stats = cohorts[cohort]
        stats.requests += requests
        stats.errors += min(errors, requests)
        bucket = bucket_of(now.rtime_ms)
        stats.latency_buckets[bucket] = stats.latency_buckets.get(bucket, 0) + requests
    return cohorts


def parse_log_lines(
    lines: Iterable[bytes | str], cohort_of: Callable[[str], Cohort | None], since: float | None = None
) -> ParsedLog:
    """Counts JSON log lines (LOG_FORMAT) per cohort. Text before the first `{` (a syslog header written by
    rsyslog's default template) is ignored."""
    result = ParsedLog()
    lookup = cohort_lookup(cohort_of)
    for raw in lines:
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            start = text.find("{")
            if start < 0:
                if text.strip():
                    raise ValueError("no JSON object")
                continue
            entry = json.loads(text[start:])
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            status = int(entry["status"])
            latency_ms = float(entry["request_time_ms"])
            address = entry.get("upstream_addr", "")
            if not isinstance(address, str):
                raise ValueError("upstream_addr is not a string")
            if status < 0:  # the client went away before HAProxy had a status
                raise ValueError("no status")
            if not (0 < status < 1000 and math.isfinite(latency_ms)):
                raise ValueError("status or request time out of range")
        except (ValueError, KeyError, TypeError):
            result.malformed += 1
            continue
        if since is not None and logged_before(entry, since):
            continue  # traffic of an earlier split
        cohort = None if address.startswith("-") else lookup(address)
        if cohort is None:
            result.unrouted += 1
            continue
        result.cohorts[cohort].record(status, max(0.0, latency_ms))
    return result


# --- the admin socket --------------------------------------------------------------------------------------


def merge_counters(a: HaproxyCounters, b: HaproxyCounters) -> HaproxyCounters:
    """One server's counters from two backends: requests and errors summed, response times averaged."""
    requests = a.requests + b.requests
    rtime = (a.rtime_ms * a.requests + b.rtime_ms * b.requests) / requests if requests else 0.0
    return HaproxyCounters(requests, a.errors + b.errors, rtime)


def stored_counters(data: Mapping[str, Any]) -> dict[str, HaproxyCounters]:
    """The per-server counters of a stored snapshot (`[requests, errors, rtime_ms]` per address)."""
    raw = data.get("servers")
    return {
        a: HaproxyCounters(int(v[0]), int(v[1]), float(v[2]))
        for a, v in (raw.items() if isinstance(raw, dict) else [])
        if isinstance(v, list) and len(v) == 3
    }


class RuntimeApi:
    """HAProxy's admin socket (`runtime_socket`) on the proxy's server: commands, servers state, weights and
    counters, each call one connection."""

    def __init__(self, transport: Transport, socket: str, proxy_host: str) -> None:
        self.transport = transport
        self.socket = socket
        self.proxy_host = proxy_host

    async def command(self, *commands: str) -> str:
        """Runs commands on the admin socket in one connection; returns HAProxy's answer."""
        for c in commands:
            if any(ch in c for ch in ";\n\r\x00"):
                raise ValueError(f"unsafe runtime command {c[:80]!r}")
        payload = (";".join(commands) + "\n").encode()
        try:
            answer = await self.transport.unix_request(self.socket, payload, SOCKET_TIMEOUT)
        except TransportError as exc:
            raise ProxyUnavailableError(f"HAProxy admin socket on {self.proxy_host}: {exc}") from exc
        return answer.decode("utf-8", errors="replace")

    async def servers(self, app_id: int, cohort: Cohort | None = None) -> dict[str, RuntimeServer] | None:
        return parse_servers_state(await self.command(f"show servers state {backend_name(app_id, cohort)}"))

    async def set_weights(self, weights: Mapping[str, Mapping[str, int]]) -> None:
        """Sets backend -> server -> weight in one admin-socket connection."""
        answer = await self.command(
            *(
                f"set weight {backend}/{n} {w}"
                for backend, servers in sorted(weights.items())
                for n, w in sorted(servers.items())
            )
        )
        if answer.strip():
            raise ProxyUnavailableError(f"HAProxy refused a weight change: {answer.strip()[:300]}")

    async def counters(self, backends: Iterable[str]) -> tuple[int | None, dict[str, HaproxyCounters]]:
        """HAProxy's process id and the per-server counters summed over `backends`."""
        info = await self.command("show info")
        total: dict[str, HaproxyCounters] = {}
        for backend in backends:
            for addr, c in parse_show_stat(await self.command(f"show stat {backend} 4 -1"), backend).items():
                old = total.get(addr)
                total[addr] = c if old is None else merge_counters(old, c)
        return parse_show_info_pid(info), total


def marker_url(spec: ProxySpec, proxy_host: str) -> str | None:
    """Where canaryd's frontend answers MARKER_PATH (a wildcard `listen` is asked on `proxy_host`); None
    without a frontend."""
    if spec.listen is None:
        return None
    host, port = parse_listen(spec.listen)
    if host is None or host in ("0.0.0.0", "::"):
        host = proxy_host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{MARKER_PATH}"


async def get_marker(http: httpx.AsyncClient, url: str, timeout: float) -> httpx.Response | None:
    """GET the frontend's marker path on a fresh connection; None when nothing answers."""
    try:
        return await http.get(url, headers={"Connection": "close"}, timeout=timeout)
    except httpx.HTTPError:
        return None


# --- the adapter -------------------------------------------------------------------------------------------


def _cut_before_reload(
    table: RouteTable, old_text: str
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]] | None:
    """For HaproxyProxy._cut_first: backend -> server -> 0 for every server of `old_text` with a weight that
    `table` does not route to, and the weights to put back; None when the table has a canary or nothing
    is to be cut."""
    if any(b.cohort == "canary" for b in table.backends):
        return None
    routed = {f"s{b.server_id}" for b in table.backends if b.weight > 0}
    before = declared_weights(old_text)
    cut = {
        backend: {name: 0 for name, weight in servers.items() if weight > 0 and name not in routed}
        for backend, servers in before.items()
    }
    cut = {backend: servers for backend, servers in cut.items() if servers}
    if not cut:
        return None
    restore = {backend: {name: before[backend][name] for name in servers} for backend, servers in cut.items()}
    return cut, restore


def _backend_cohorts(spec: ProxySpec, table: RouteTable | None = None) -> tuple[Cohort | None, ...]:
    """The backends of the file: the weighted one (None) and, with force_header or A/B rules, one per
    cohort. Without a table (removal, counters) every backend the file may hold: asking HAProxy about
    one it does not have answers nothing."""
    if spec.force_header is not None or table is None or match_rules(table.backends):
        return (None, "canary", "stable")
    return (None,)


async def _install_file(
    transport: Transport, spec: ProxySpec, text: str | None, previous: bytes | None, reload: bool
) -> None:
    """Installs `text` as `config_path` (None removes it), runs the test command and, with `reload`, the
    reload command; the previous bytes are put back on any failure (files.install)."""

    async def test_and_reload() -> None:
        if spec.test_command:
            result = await transport.run(spec.test_command, timeout=COMMAND_TIMEOUT)
            if not result.ok:
                raise ProxyConfigError(f"HAProxy rejected the configuration: {result.tail()}")
        if reload:
            result = await transport.run(spec.reload_command, timeout=COMMAND_TIMEOUT)
            if not result.ok:
                raise ProxyConfigError(f"HAProxy reload failed (exit {result.exit_status}): {result.tail()}")

    data = text.encode() if text is not None else None
    await install(transport, spec.config_path, data, previous, test_and_reload)


def _resending_reload(
    serves: Callable[[], Awaitable[bool]], transport: Transport, spec: ProxySpec, proxy_host: str
) -> Callable[[float], Awaitable[bool]]:
    """A probe for poll_until after a reload: `serves`, and while it is False, the reload sent again at
    each of RELOAD_RESENDS seconds (see there: HAProxy loses a reload signal that arrives mid-reload)."""
    started = time.monotonic()
    resends = list(RELOAD_RESENDS)

    async def probe(_: float) -> bool:
        if await serves():
            return True
        if resends and time.monotonic() - started >= resends[0]:
            resends.pop(0)
            logger.info(
                "HAProxy on %s does not serve %s yet %.1f s after the reload: reloading again",
                proxy_host,
                spec.config_path,
                time.monotonic() - started,
            )
            try:
                result = await transport.run(spec.reload_command, timeout=COMMAND_TIMEOUT)
            except TransportError as exc:
                logger.info("HAProxy reload sent again failed: %s", exc)
            else:
                if not result.ok:
                    logger.info("HAProxy reload sent again exited %s: %s", result.exit_status, result.tail())
        return False

    return probe


class HaproxyProxy:
    """The Proxy protocol for HAProxy, reached through `transport` on the proxy's server (`proxy_host`)."""

    def __init__(
        self,
        transport: Transport,
        spec: ProxySpec,
        proxy_host: str,
        http: httpx.AsyncClient,
        *,
        verify_timeout: float = 5.0,
        poll_interval: float = 0.01,
        settle: float = 0.15,
    ) -> None:
        if spec.runtime_socket is None:
            raise ValueError("HAProxy needs runtime_socket")
        self.transport = transport
        self.spec = spec
        self.socket: str = spec.runtime_socket
        self.runtime = RuntimeApi(transport, spec.runtime_socket, proxy_host)
        self.proxy_host = proxy_host
        self.http = http
        self.verify_timeout = verify_timeout
        self.poll_interval = poll_interval
        self.settle = settle
        #: How the last apply went live: "runtime" (weights over the socket) or "reload".
        self.last_path: str | None = None
        #: Runtime path only: milliseconds from the start of apply until HAProxy had set the weights.
        self.live_ms: float | None = None
        self.traffic = HaproxyTraffic(transport, spec, proxy_host, self.runtime)

    async def command(self, *commands: str) -> str:
        """Runs commands on the admin socket in one connection (RuntimeApi.command)."""
        return await self.runtime.command(*commands)

    # apply ---------------------------------------------------------------------------------------------
    async def apply(self, table: RouteTable) -> None:
        """Install the file; then set weights live (same servers) or reload (anything else)."""
        async with file_lock(self.spec.server_id, self.spec.config_path):
            try:
                await self._apply(table)
            except TransportError as exc:
                raise ProxyUnavailableError(f"HAProxy on {self.proxy_host}: {exc}") from exc

    async def _apply(self, table: RouteTable) -> None:
        previous = await read_optional(self.transport, self.spec.config_path)
        old_text = previous.decode("utf-8", errors="replace") if previous is not None else None
        retained = declared_servers(old_text) if old_text is not None else {}
        try:
            text = render_haproxy(table, self.spec, retained)
        except ValueError as exc:
            raise ProxyConfigError(f"cannot render HAProxy configuration: {exc}") from exc
        declared = set(declared_servers(text))
        self.traffic.known_app_id = table.app_id
        started = time.perf_counter()
        if (
            old_text is None
            or structure(old_text) != structure(text)
            or not await self._running_as_rendered(table, declared)
        ):
            cut = await self._cut_first(table, old_text) if old_text is not None else None
            try:
                await _install_file(self.transport, self.spec, text, previous, reload=True)
            except BaseException:
                if cut is not None:  # the previous file stays, so its weights must too
                    with contextlib.suppress(ProxyUnavailableError):
                        await self.runtime.set_weights(cut)
                raise
            self.last_path, self.live_ms = "reload", None
            return
        # Weights first: live at once (a rollback to 0 % must not wait for the test command).
        await self.runtime.set_weights(all_expected_weights(table, declared, self.spec))
        self.live_ms = (time.perf_counter() - started) * 1000
        self.last_path = "runtime"
        try:
            await _install_file(self.transport, self.spec, text, previous, reload=False)
        except BaseException:
            # The previous file stays, so the previous weights must too (a restart would bring them back).
            with contextlib.suppress(ProxyUnavailableError):
                await self.runtime.set_weights(declared_weights(old_text))
            raise

    async def _cut_first(self, table: RouteTable, old_text: str) -> dict[str, dict[str, int]] | None:
        """Before a reload that gives the canary nothing (the end of an A/B test: its rules leave the
        frontend, so the file's structure changes), takes every server the new table does not route to out
        of every backend of the running HAProxy at once, over the admin socket: a rollback's cut must not
        wait for the test command and the reload. It only ever lowers weights to 0, never adds traffic.
        Returns the weights to put back if the reload fails (None when nothing was cut); best effort: a
        socket that does not answer leaves the cut to the reload."""
        weights = _cut_before_reload(table, old_text)
        if weights is None:
            return None
        cut, restore = weights
        try:
            await self.runtime.set_weights(cut)
        except ProxyUnavailableError as exc:
            logger.info("HAProxy: could not cut before the reload, the reload will: %s", exc)
            return None
        return restore

    async def _running_as_rendered(self, table: RouteTable, declared: set[int]) -> bool:
        """Whether the running HAProxy has the backend with exactly the declared servers (and the frontend).
        The admin-socket questions and the frontend's marker are asked at once: this is on the way to a
        rollback's weights."""
        app_id = table.app_id
        cohorts = _backend_cohorts(self.spec, table)
        frontend = asyncio.ensure_future(self._frontend_live(table))
        try:
            states = await asyncio.gather(*(self.runtime.servers(app_id, c) for c in cohorts))
        except ProxyUnavailableError as exc:
            logger.info("HAProxy runtime API unavailable, reloading instead: %s", exc)
            frontend.cancel()
            return False
        except BaseException:
            frontend.cancel()
            raise
        if any(servers is None or set(servers) != {f"s{sid}" for sid in declared} for servers in states):
            frontend.cancel()
            return False
        return await frontend is not False

    async def remove(self, app_id: int) -> None:
        """Deletes the application's file, tests and reloads; the file is put back on a failure."""
        async with file_lock(self.spec.server_id, self.spec.config_path):
            try:
                previous = await read_optional(self.transport, self.spec.config_path)
                await _install_file(self.transport, self.spec, None, previous, reload=True)
                await self.transport.remove(self.traffic.snapshots.path)
            except TransportError as exc:
                raise ProxyUnavailableError(f"HAProxy on {self.proxy_host}: {exc}") from exc
        self.last_path = "reload"

    async def verify_removed(self, app_id: int) -> bool:
        """True once the running HAProxy knows no backend of the application and its frontend no longer
        answers, without a break for `settle` seconds (old and new workers overlap after a reload)."""

        async def gone() -> bool:
            for cohort in _backend_cohorts(self.spec):
                try:
                    if await self.runtime.servers(app_id, cohort) is not None:
                        return False
                except ProxyUnavailableError:
                    return False
            return not await self._frontend_answers()

        probe = _resending_reload(gone, self.transport, self.spec, self.proxy_host)
        return await poll_until(probe, self.verify_timeout, self.poll_interval, self.settle)

    # verify --------------------------------------------------------------------------------------------
    async def _frontend_answers(self) -> bool:
        """Whether anything answers the marker path with 200 (a frontend of the application still bound)."""
        url = marker_url(self.spec, self.proxy_host)
        response = None if url is None else await get_marker(self.http, url, 2.0)
        return response is not None and response.status_code == 200

    async def _frontend_live(self, table: RouteTable, timeout: float = 2.0) -> bool | None:
        """Whether the frontend answers its fingerprint (one fresh connection); None without a frontend."""
        url = marker_url(self.spec, self.proxy_host)
        if url is None:
            return None
        response = await get_marker(self.http, url, timeout)
        if response is None:
            return False
        expected = frontend_fingerprint(table.app_id, self.spec, match_rules(table.backends))
        return response.status_code == 200 and response.text == expected

    async def _serves(self, table: RouteTable) -> bool:
        for cohort in _backend_cohorts(self.spec, table):
            try:
                servers = await self.runtime.servers(table.app_id, cohort)
            except ProxyUnavailableError as exc:
                logger.debug("HAProxy check failed: %s", exc)
                return False
            if not runtime_matches(servers, table, cohort):
                return False
        return await self._frontend_live(table) is not False

    async def verify(self, table: RouteTable) -> bool:
        """True once HAProxy's weights (read back over the socket) and frontend are those of `table`. After a
        reload, old and new workers overlap briefly, so that answer must hold for `settle` seconds."""
        if self.last_path == "reload":
            serves_it = _resending_reload(
                lambda: self._serves(table), self.transport, self.spec, self.proxy_host
            )
            settle = self.settle
        else:

            async def serves_it(_: float) -> bool:
                return await self._serves(table)

            settle = 0.0
        if not await poll_until(serves_it, self.verify_timeout, self.poll_interval, settle):
            return False
        await self.traffic.snapshot_at_switch()
        return True

    async def check(self, table: RouteTable) -> bool:
        """One look: does HAProxy still route like `table` (weights, servers, frontend)?"""
        return await self._serves(table)

    # traffic -------------------------------------------------------------------------------------------
    async def traffic_offset(self) -> int:
        """With a log: its size. Without: a new counter snapshot's id (HaproxyTraffic)."""
        return await self.traffic.traffic_offset()

    async def read_traffic(
        self, offset: int, cohort_of: Callable[[str], Cohort | None], since: float | None = None
    ) -> TrafficReading:
        """Per-cohort requests since `offset` (HaproxyTraffic; the module docstring has the two sources)."""
        return await self.traffic.read_traffic(offset, cohort_of, since)


# --- the adapter's traffic ---------------------------------------------------------------------------------


class HaproxyTraffic:
    """Per-cohort traffic of one application behind HAProxy, for HaproxyProxy: from the JSON log when there
    is one, else from the per-server counters of `show stat`, kept as snapshots in a state file beside
    `config_path` (the module docstring has both)."""

    def __init__(self, transport: Transport, spec: ProxySpec, proxy_host: str, runtime: RuntimeApi) -> None:
        self.transport = transport
        self.spec = spec
        self.proxy_host = proxy_host
        self.runtime = runtime
        #: Set by HaproxyProxy.apply; until then read from the file (read_traffic gets no table).
        self.known_app_id: int | None = None
        self.snapshots = SnapshotStore(transport, spec.config_path, proxy_host)

    async def _app_id(self) -> int:
        """The application id, from the backend name in the file canaryd wrote (read_traffic gets no table)."""
        if self.known_app_id is not None:
            return self.known_app_id
        try:
            data = await self.transport.read_file(self.spec.config_path, 0, 4096)
        except TransportError as exc:
            raise ProxyUnavailableError(f"cannot read {self.spec.config_path}: {exc}") from exc
        m = re.search(rb"^backend canaryd_app_(\d+)$", data, re.MULTILINE)
        if m is None:
            raise ProxyUnavailableError(f"{self.spec.config_path} has no canaryd backend")
        self.known_app_id = int(m.group(1))
        return self.known_app_id

    async def _snapshot(self, state: dict[str, Any]) -> tuple[int, int | None, dict[str, HaproxyCounters]]:
        """Takes a counter snapshot, stores it under a new id, returns (id, pid, counters)."""
        app_id = await self._app_id()
        backends = (backend_name(app_id, c) for c in _backend_cohorts(self.spec))
        pid, counters = await self.runtime.counters(backends)
        servers = {a: [c.requests, c.errors, c.rtime_ms] for a, c in counters.items()}
        return await self.snapshots.add(state, {"pid": pid, "servers": servers}), pid, counters

    async def snapshot_at_switch(self) -> None:
        """Called once a new split is proven live; without a log, takes a counter snapshot (best effort)."""
        if self.spec.access_log is None:
            # Counters carry no timestamps: a snapshot taken now lets the stage that starts with this split
            # count from here (read_traffic's `since`), not from the previous split's last reading.
            try:
                await self._snapshot(await self.snapshots.load())
            except ProxyUnavailableError as exc:
                logger.info("no counter snapshot at the switch: %s", exc)

    async def traffic_offset(self) -> int:
        """With a log: its size. Without: a new counter snapshot's id."""
        if self.spec.access_log is not None:
            return await log_size(self.transport, self.spec.access_log, self.proxy_host)
        seq, _, _ = await self._snapshot(await self.snapshots.load())
        return seq

    async def read_traffic(
        self, offset: int, cohort_of: Callable[[str], Cohort | None], since: float | None = None
    ) -> TrafficReading:
        """Per-cohort requests since `offset` (see the module docstring for the two sources)."""
        if self.spec.access_log is not None:
            read = await tail(self.transport, self.spec.access_log, offset, self.proxy_host)
            return TrafficReading(parse_log_lines(read.lines, cohort_of, since).cohorts, read.next_offset)
        state = await self.snapshots.load()
        base = SnapshotStore.base(state, offset, since)
        seq, pid, counters = await self._snapshot(state)
        if base is None:  # unknown offset (0, or pruned): traffic counts from now on
            return TrafficReading(no_traffic(), seq)
        data = base.get("data") or {}
        same = pid is not None and data.get("pid") == pid
        return TrafficReading(counter_deltas(stored_counters(data), counters, same, cohort_of), seq)


__all__ = [
    "LOG_FORMAT",
    "MARKER_PATH",
    "HaproxyCounters",
    "HaproxyProxy",
    "HaproxyTraffic",
    "RuntimeApi",
    "all_expected_weights",
    "cookie_name",
    "counter_deltas",
    "declared_servers",
    "declared_weights",
    "frontend_fingerprint",
    "parse_log_lines",
    "parse_servers_state",
    "parse_show_stat",
    "render_haproxy",
    "runtime_matches",
    "structure",
]
