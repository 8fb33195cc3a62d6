"""nginx: one include file per application, installed atomically, tested, reloaded and then proven live.

The rules this adapter keeps:

* canaryd owns exactly one file per application (`ProxySpec.config_path`, e.g. `conf.d/app.conf`, pulled in
  by the operator's `include conf.d/*.conf;`). It holds a JSON `log_format canaryd_<id>`, an
  `upstream canaryd_app_<id>` and, when `listen` is set, the `server` block. Identifiers use the integer
  application id; the application's name only ever appears, reduced to `[A-Za-z0-9_.-]`, in a comment.
* The split lives in integer weights (computed by the domain). nginx rejects `weight=0`, so a server that
  must get no traffic is absent from the upstream; an upstream always has at least one server.
* With `sticky` or `force_header` (nginx OSS has no `sticky` directive) the file also holds one upstream per
  cohort and `map`s choosing the upstream per request: the forced header (`always`/`never`) first, then the
  cookie `canaryd_<id>=c.<generation>|s.<generation>`, else the weighted upstream (new users follow the
  split). Answers to requests with neither get a cookie naming the cohort of the server that answered
  (`$upstream_addr`). A new generation (a new stage) invalidates every cookie, so users are split afresh at
  the new percentage. An empty cohort's upstream holds the other cohort: forcing never meets an empty upstream.
* Everything that reaches the file is checked again here (pydantic already did): a value that could carry
  nginx syntax (whitespace, `;`, braces, `#`, quotes, `$`, backslash, control characters) raises ValueError.
  A renderer must never emit injected syntax.
* `apply` never leaves a file in place that did not pass the test command: the new text goes to a temp file
  in the same directory whose name does not match `*.conf`, is renamed over the live file, tested, and on a
  failed test or reload the previous bytes are put back (or the file removed if there was none). Over SSH
  (`one_command`) the same steps are one shell script, one round trip (files.install_in_one_command).
* `verify` asks nginx itself: the server block answers `/.canaryd/generation` with the generation it was
  rendered for (and the answering worker's pid in `X-Canaryd-Worker`). The new number on a fresh connection,
  and every worker that accepted connections before the reload exited or shutting down (nginx_workers.py,
  read in /proc), prove that every new connection gets the new configuration. Without that view of /proc,
  the new number must answer without a break for longer than nginx's 100 ms hand-over from old to new
  workers. A reload that nginx refused (its master keeps the old configuration and `nginx -s reload` still
  exits 0) shows up here.
* `read_traffic` tails the JSON access log from an offset, consuming only complete lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Callable, Iterable

import httpx

from canaryd.domain.addresses import HEADER_NAME, parse_listen
from canaryd.domain.addresses import format_address as _format_address
from canaryd.domain.config import ProxySpec
from canaryd.domain.matching import equals_problems, name_problems, regex_problems
from canaryd.domain.types import Backend, Cohort, MatchRule, match_rules
from canaryd.proxies.base import ProxyConfigError, ProxyUnavailableError, RouteTable, TrafficReading
from canaryd.proxies.checks import check_int, logged_before, reject_syntax
from canaryd.proxies.files import (
    failed_step,
    file_lock,
    inlinable,
    install,
    install_in_one_command,
    read_optional,
)
from canaryd.proxies.logs import ParsedLog, cohort_lookup, log_size, tail
from canaryd.proxies.nginx_workers import (
    WORKER_HEADER,
    KnownMasters,
    answering_worker,
    reported_workers,
    snapshot,
    still_accepting,
    workers_script,
)
from canaryd.proxies.polling import poll_until
from canaryd.transports.base import CommandResult, Transport, TransportError
from canaryd.transports.ssh import SshTransport

logger = logging.getLogger(__name__)

#: Path of the generation probe served by the rendered server block.
GENERATION_PATH = "/.canaryd/generation"
#: Internal location the mirrored copies of requests go through (strategy mirror).
MIRROR_PATH = "/.canaryd/mirror"
#: Seconds a copy may take to connect to the canary, and to send or read (each), before nginx gives up
#: (a 504 or 502 on the canary's account): bounds how long a slow canary can hold a client's connection.
MIRROR_CONNECT_TIMEOUT = 1
MIRROR_TIMEOUT = 5
COMMAND_TIMEOUT = 30.0
#: How long the install script waits for the probe naming a worker (nginx_workers.py) before it goes
#: without: the reload is not held up for a slow answer, the settle time is the proof then.
WORKER_PROBE_TIMEOUT = 0.5

_PATH = re.compile(r"/[A-Za-z0-9_./@+-]{0,1023}")
_FORBIDDEN = re.compile(r"[\s;{}#'\"`$\\\x00-\x1f\x7f]")
_COMMENT_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_ADDR_SEPARATORS = re.compile(r"\s*,\s*|\s+:\s+")
_SECONDS = re.compile(r"\d{1,9}(?:\.\d{1,6})?")

# Fields of the JSON access log line. nginx escapes values itself (escape=json).
_LOG_FIELDS = (
    ("time", "$msec"),
    ("status", "$status"),
    ("request_time", "$request_time"),
    ("upstream_addr", "$upstream_addr"),
    ("upstream_status", "$upstream_status"),
    ("upstream_response_time", "$upstream_response_time"),
    ("method", "$request_method"),
)


# --- rendering (pure) -------------------------------------------------------------------------------------


def _reject_syntax(value: str, what: str) -> str:
    return reject_syntax(value, what, _FORBIDDEN, "nginx")


def format_address(host: str, port: int) -> str:
    """`host:port` as nginx writes it in `$upstream_addr` (IPv6 in brackets). Raises ValueError if unsafe."""
    _reject_syntax(host, "host")
    return _format_address(host, port)


def _check_path(value: str, what: str) -> str:
    _reject_syntax(value, what)
    if not _PATH.fullmatch(value):
        raise ValueError(f"{what} {value[:80]!r} must be an absolute path of letters, digits and _ . / @ + -")
    return value


def _parse_listen(value: str) -> tuple[str | None, int]:
    """(host or None, port) of a `listen` value (domain/addresses.py)."""
    _reject_syntax(value, "listen")
    return parse_listen(value)


def _upstream(name: str, servers: list[str], spec: ProxySpec) -> list[str]:
    return [
        f"upstream {name} {{",
        *servers,
        *([f"    keepalive {spec.upstream_keepalive};"] if spec.upstream_keepalive else []),
        "}",
    ]


def _header_variable(name: str) -> str:
    """`$http_x_canary` for `X-Canary`. Raises ValueError for anything but letters, digits and '-'."""
    if not HEADER_NAME.fullmatch(name):
        raise ValueError(f"force_header {name[:80]!r} must be letters, digits and '-', at most 64")
    return "$http_" + name.lower().replace("-", "_")


def _rule_variable(rule: MatchRule) -> str:
    """`$http_x_beta` for header X-Beta, `$cookie_plan` for cookie plan; ValueError for an unsafe name."""
    problems = name_problems(rule.source, rule.name)
    if problems:
        raise ValueError(problems[0])
    if rule.source == "header":
        return _header_variable(rule.name)
    return f"$cookie_{rule.name}"


def _rule_regex(rule: MatchRule) -> str:
    """The PCRE nginx matches the value with: an exact value anchored and escaped, a regex as given."""
    problems = equals_problems(rule.value) if rule.op == "equals" else regex_problems(rule.value)
    if problems:
        raise ValueError(problems[0])
    return f"^{re.escape(rule.value)}$" if rule.op == "equals" else rule.value


def _nginx_quoted(value: str) -> str:
    """`value` for inside nginx double quotes, whose parser reads a doubled backslash as one: every backslash
    is doubled (domain/matching.py already refused quotes and control characters)."""
    if any(c in value for c in '"\n\r\t') or not value.isprintable():
        raise ValueError(f"{value[:80]!r} cannot be quoted for nginx")
    return value.replace("\\", "\\\\")


def _cohort_routing(
    app_id: int,
    generation: int,
    by_cohort: dict[Cohort, list[str]],
    addresses: dict[str, Cohort],
    spec: ProxySpec,
    rules: tuple[MatchRule, ...] = (),
) -> tuple[list[str], list[str]]:
    """Cohort upstreams and the maps that pick one per request (stickiness, forced routing): the lines for
    the http level and those for the proxying location.

    New users go to the weighted upstream; a request that forces a cohort (`force_header: always|never`) or
    carries this generation's cookie goes to that cohort's own upstream. An empty cohort's upstream holds the
    other cohort's servers (nginx needs at least one server, and a forced or sticky request must not fail).
    The cookie names the cohort that really answered (`$upstream_addr`, its last entry after retries) and the
    generation, so every new generation (a new stage) splits users afresh at the new percentage."""
    canary_up, stable_up = f"canaryd_app_{app_id}_canary", f"canaryd_app_{app_id}_stable"
    lines: list[str] = []
    lines += ["", *_upstream(canary_up, by_cohort["canary"] or by_cohort["stable"], spec)]
    lines += ["", *_upstream(stable_up, by_cohort["stable"] or by_cohort["canary"], spec)]
    keys: list[str] = []
    if spec.force_header is not None:
        keys.append(f"$canaryd_forced_{app_id}")
        lines += _forced_map(app_id, spec.force_header)
    # A/B rules: one map per rule, "c" when it matches; any of them sends the request to the canary (after
    # the forced header, before the sticky cookie: the rule decides, not the split a cookie remembers).
    for i, rule in enumerate(rules):
        keys.append(f"$canaryd_ab_{app_id}_{i}")
        lines += _rule_map(app_id, i, rule)
    if spec.sticky:
        keys.append(f"$canaryd_kept_{app_id}")
        lines += _sticky_maps(app_id, generation, addresses, "".join(keys))
    lines += _upstream_map(app_id, keys, rules)
    location = [f"        proxy_pass http://$canaryd_upstream_{app_id};"]
    if spec.sticky:
        location.append(f"        add_header Set-Cookie $canaryd_set_cookie_{app_id} always;")
    return lines, location


def _forced_map(app_id: int, header: str) -> list[str]:
    """`$canaryd_forced_<id>`: "c" for the forced header's value `always`, "s" for `never`."""
    return [
        "",
        f"map {_header_variable(header)} $canaryd_forced_{app_id} {{",
        '    default "";',
        "    always c;",
        "    never s;",
        "}",
    ]


def _rule_map(app_id: int, index: int, rule: MatchRule) -> list[str]:
    """`$canaryd_ab_<id>_<index>`: "c" when the request matches A/B rule number `index`."""
    return [
        "",
        f"map {_rule_variable(rule)} $canaryd_ab_{app_id}_{index} {{",
        '    default "";',
        f'    "~{_nginx_quoted(_rule_regex(rule))}" c;',
        "}",
    ]


def _sticky_maps(app_id: int, generation: int, addresses: dict[str, Cohort], keys: str) -> list[str]:
    """The cohort this generation's cookie keeps (`$canaryd_kept_<id>`), the cohort of the server that
    answered (`$canaryd_got_<id>`) and the cookie to set (`$canaryd_set_cookie_<id>`); `keys` are the
    variables, this one's last, that choose the upstream."""
    cookie = f"canaryd_{app_id}"
    return [
        "",
        f"map $cookie_{cookie} $canaryd_kept_{app_id} {{",
        '    default "";',
        f"    c.{generation} c;",
        f"    s.{generation} s;",
        "}",
        "",
        f"map $upstream_addr $canaryd_got_{app_id} {{",
        '    default "";',
        *(
            # The last address nginx tried ("a, b" after a retry, "a : b" across internal redirects).
            f'    "~(^|\\s){re.escape(address)}$" {"c" if cohort == "canary" else "s"};'
            for address, cohort in addresses.items()
        ),
        "}",
        "",
        # Only a request that was neither forced nor carried a valid cookie gets one.
        f'map "{keys}:$canaryd_got_{app_id}" $canaryd_set_cookie_{app_id} {{',
        '    default "";',
        *(f'    ":{c}" "{cookie}={c}.{generation}; Path=/; HttpOnly; SameSite=Lax";' for c in ("c", "s")),
        "}",
    ]


def _upstream_map(app_id: int, keys: list[str], rules: tuple[MatchRule, ...]) -> list[str]:
    """`$canaryd_upstream_<id>`: the cohort upstream the keys' first letter names, else the weighted one."""
    canary_up, stable_up = f"canaryd_app_{app_id}_canary", f"canaryd_app_{app_id}_stable"
    # A forced cohort wins over an A/B rule, which wins over the cookie: the first letter of the key decides.
    lines = ["", f'map "{"".join(keys)}" $canaryd_upstream_{app_id} {{', f"    default canaryd_app_{app_id};"]
    if rules:  # up to 2 + rules letters: match on the first one
        lines += [f'    "~^c" {canary_up};', f'    "~^s" {stable_up};']
    else:
        lines += [
            f"    {first}{rest} {canary_up if first == 'c' else stable_up};"
            for first in "cs"
            for rest in ("", "c", "s")
            if rest == "" or len(keys) == 2
        ]
    return [*lines, "}"]


def _mirroring(
    app_id: int, mirrored: list[Backend], spec: ProxySpec, location: list[str], fields: str
) -> tuple[list[str], list[str], list[str]]:
    """Strategy mirror: the http-level lines (the canaries' upstream, the draw of the copied requests, the
    clients' log format), the proxying location with its `mirror`, and the internal location the copies go
    to. nginx throws the copies' answers away: clients only ever get stable's.

    The copies' own lines (`log_subrequest on`) carry the canary's status, time and address, so the access
    log counts them for the canary cohort; a copy that was not drawn is answered 204 there, unlogged,
    without reaching the canary. A client's line is written only once its copy is answered too, so its
    `$request_time` would include the canary's: it is logged with `"mirrored":"1"` and read by its
    upstream's time instead (`parse_access_log_lines`)."""
    percents = {b.mirror for b in mirrored}
    if len(percents) != 1 or any(b.cohort != "canary" for b in mirrored):
        raise ValueError("a mirror must copy the same share to every canary server, and to canaries only")
    percent = check_int(percents.pop(), "mirror percent", 1, 100)
    if spec.listen is None or spec.access_log is None:
        raise ValueError("a mirror needs listen and access_log: its copies' answers are read from the log")
    log = _check_path(spec.access_log, "access_log")
    servers = [
        f"    server {format_address(b.host, b.port)} max_fails=0;  # canary server {b.server_id}, mirror"
        for b in mirrored
    ]
    upstream = f"canaryd_app_{app_id}_mirror"
    draw = f"$canaryd_mirror_{app_id}"
    head = ["", *_upstream(upstream, servers, spec), ""]
    head.append(f'log_format canaryd_{app_id}_client escape=json \'{{{fields},"mirrored":"1"}}\';')
    if percent < 100:  # which requests are copied: a random draw per request
        head += ["", f'split_clients "${{request_id}}" {draw} {{', f"    {percent}% c;", '    * "";', "}"]
    location = [
        *location,
        f"        mirror {MIRROR_PATH};",
        "        mirror_request_body on;",
        f'        access_log "{log}" canaryd_{app_id}_client;',
    ]
    return head, location, _mirror_location(app_id, percent, spec)


def _mirror_location(app_id: int, percent: int, spec: ProxySpec) -> list[str]:
    """The internal location the copies go to: below 100 % a copy that was not drawn is answered 204 here
    (unlogged, never reaching the canary); the others go to the canaries, their lines logged."""
    draw = f"$canaryd_mirror_{app_id}"
    keepalive = (
        ["        proxy_http_version 1.1;", '        proxy_set_header Connection "";']
        if spec.upstream_keepalive
        else []
    )
    return [
        f"    location = {MIRROR_PATH} {{",
        "        internal;",
        "        log_subrequest on;",
        *(
            [
                f'        if ({draw} = "") {{',
                "            access_log off;",
                "            return 204;",
                "        }",
            ]
            if percent < 100
            else []
        ),
        f"        proxy_pass http://canaryd_app_{app_id}_mirror$request_uri;",
        *keepalive,
        "        proxy_set_header Host $host;",
        # A slow canary must not hold clients' keep-alive connections for long (nginx finishes a request,
        # and reads the connection's next one, only once its copy is answered): bounded here.
        f"        proxy_connect_timeout {MIRROR_CONNECT_TIMEOUT}s;",
        f"        proxy_send_timeout {MIRROR_TIMEOUT}s;",
        f"        proxy_read_timeout {MIRROR_TIMEOUT}s;",
        "    }",
    ]


def render_nginx(table: RouteTable, spec: ProxySpec) -> str:
    """The whole include file for one application. Pure; raises ValueError on any unsafe or impossible value."""
    app_id = check_int(table.app_id, "app_id", 0)
    generation = check_int(table.generation, "generation", 0)
    if not table.backends:
        raise ValueError("an nginx upstream needs at least one server")
    comment_name = _COMMENT_SAFE.sub("_", str(table.app_name))[:63] or "_"

    rules = match_rules(table.backends)
    mirrored = [b for b in table.backends if b.mirror]
    servers, by_cohort, addresses = _server_lines(table, spec, rules)
    fields = ",".join(f'"{name}":"{var}"' for name, var in _LOG_FIELDS)
    lines = [
        f"# managed by canaryd, generation {generation} — do not edit",
        f"# application {app_id} ({comment_name})",
        "",
        f"log_format canaryd_{app_id} escape=json '{{{fields}}}';",
        "",
        *_upstream(f"canaryd_app_{app_id}", servers, spec),
    ]
    location = [f"        proxy_pass http://canaryd_app_{app_id};"]
    if spec.sticky or spec.force_header is not None or rules:
        routing, location = _cohort_routing(app_id, generation, by_cohort, addresses, spec, rules)
        lines += routing
    mirror_location: list[str] = []
    if mirrored:
        head, location, mirror_location = _mirroring(app_id, mirrored, spec, location, fields)
        lines += head
    if spec.listen is not None:
        lines += _server_block(app_id, generation, spec, location, mirror_location)
    return "\n".join(lines) + "\n"


def _server_lines(
    table: RouteTable, spec: ProxySpec, rules: tuple[MatchRule, ...]
) -> tuple[list[str], dict[Cohort, list[str]], dict[str, Cohort]]:
    """The checked `server` lines: those of the weighted upstream (never empty), those of each cohort's own
    upstream (A/B rule-bound canaries only there), and each address's cohort."""
    servers: list[str] = []
    by_cohort: dict[Cohort, list[str]] = {"canary": [], "stable": []}
    addresses: dict[str, Cohort] = {}
    for b in table.backends:
        address = format_address(b.host, b.port)
        if b.mirror:  # gets copies only (`_mirroring`), never a live request
            addresses[address] = b.cohort
            continue
        check_int(b.weight, f"weight of {address}", 1, spec.weight_limit)
        if b.cohort not in ("canary", "stable"):
            raise ValueError(f"cohort of {address} must be 'canary' or 'stable', not {str(b.cohort)[:20]!r}")
        if address in addresses:
            raise ValueError(f"server {address} appears twice in the route table")
        addresses[address] = b.cohort
        if b.match:  # takes only the requests its A/B rules match: no weight in the split
            if b.match != rules or b.cohort != "canary":
                raise ValueError("A/B rules must be the same on every canary server, and on canaries only")
            by_cohort["canary"].append(
                f"    server {address} max_fails=0;  # canary server {b.server_id}, A/B"
            )
            continue
        line = f"    server {address} weight={b.weight} max_fails=0;  # {b.cohort} server {b.server_id}"
        servers.append(line)
        by_cohort[b.cohort].append(line)
    if not servers:
        raise ValueError("the weighted upstream needs at least one server without A/B rules")
    return servers, by_cohort, addresses


def _server_block(
    app_id: int, generation: int, spec: ProxySpec, location: list[str], extra: list[str] | None = None
) -> list[str]:
    """The `server` block canaryd owns when `listen` is set: the generation probe and `location /`."""
    assert spec.listen is not None
    # Without upstream keep-alive nginx speaks HTTP/1.0 to the app, one connection per request (its default).
    keepalive = (
        ["        proxy_http_version 1.1;", '        proxy_set_header Connection "";']
        if spec.upstream_keepalive
        else []
    )
    _parse_listen(spec.listen)
    log_line = (
        f'    access_log "{_check_path(spec.access_log, "access_log")}" canaryd_{app_id};'
        if spec.access_log is not None
        else None
    )
    return [
        "",
        "server {",
        f"    listen {spec.listen};",
        *([log_line] if log_line else []),
        f"    location = {GENERATION_PATH} {{",
        "        access_log off;",
        "        default_type text/plain;",
        f"        add_header {WORKER_HEADER} $pid always;",
        f'        return 200 "{generation}\\n";',
        "    }",
        "    location / {",
        *location,
        *keepalive,
        "        proxy_set_header Host $host;",
        "        proxy_next_upstream error timeout;",
        "    }",
        *(extra or []),
        "}",
    ]


# --- access log parsing (pure) ----------------------------------------------------------------------------


def last_upstream(upstream_addr: str) -> str | None:
    """The server that answered: the last entry of `$upstream_addr` ("a, b" on retries, "x : y" across
    internal redirects); None when nginx used no upstream."""
    parts = [p.strip() for p in _ADDR_SEPARATORS.split(upstream_addr.strip())]
    last = parts[-1] if parts else ""
    return None if last in ("", "-") else last


def parse_access_log_lines(
    lines: Iterable[bytes | str], cohort_of: Callable[[str], Cohort | None], since: float | None = None
) -> ParsedLog:
    """Counts JSON access-log lines per cohort. The cohort is that of the last upstream tried, so a 502/504
    that nginx generated after failing to reach an upstream counts against that upstream's cohort.

    `cohort_of` is asked with the address as nginx wrote it (see `format_address`: IPv6 in brackets); for an
    IPv6 address it is asked again without brackets (`::1:8080`) if the first answer is None."""
    result = ParsedLog()
    lookup = cohort_lookup(cohort_of)

    for raw in lines:
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            if not text.strip():
                continue
            entry = json.loads(text)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            status = int(entry["status"])
            latency_ms = _latency_ms(entry)
            if not (0 < status < 1000 and math.isfinite(latency_ms) and latency_ms >= 0):
                raise ValueError("status or request_time out of range")
            upstream_addr = entry.get("upstream_addr", "")
            if not isinstance(upstream_addr, str):
                raise ValueError("upstream_addr is not a string")
        except (ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            result.malformed += 1
            continue
        if since is not None and logged_before(entry, since):
            continue
        address = last_upstream(upstream_addr)
        cohort = lookup(address) if address is not None else None
        if cohort not in ("canary", "stable"):
            result.unrouted += 1
            continue
        result.cohorts[cohort].record(status, latency_ms)
        # nginx retried this request on another server after an earlier one failed (connection refused,
        # timeout): the client never saw that failure, but the server that failed must be charged with it,
        # or a canary that refuses connections would look like a quiet one.
        for failed in failed_attempts(upstream_addr, entry.get("upstream_status", "")):
            failed_cohort = lookup(failed)
            if failed_cohort in ("canary", "stable"):
                result.cohorts[failed_cohort].record(502, 0.0)
    return result


def _latency_ms(entry: dict[str, object]) -> float:
    """A line's latency: `request_time`, except for a client's request whose copy went to a mirror
    (`"mirrored":"1"`), which nginx logs only once the copy was answered too: there, the time its
    upstreams took (summed over retries), when nginx used one."""
    if entry.get("mirrored") == "1":
        raw = entry.get("upstream_response_time")
        parts = [p.strip() for p in _ADDR_SEPARATORS.split(raw.strip())] if isinstance(raw, str) else []
        if parts and all(_SECONDS.fullmatch(p) for p in parts):
            return sum(float(p) for p in parts) * 1000.0
    return float(str(entry["request_time"])) * 1000.0


def failed_attempts(upstream_addr: str, upstream_status: object) -> list[str]:
    """Addresses of the attempts before the last that failed (5xx or no answer), from `$upstream_addr` and
    `$upstream_status` ("a, b" and "502, 200" on a retry)."""
    if not isinstance(upstream_status, str):
        return []
    addresses = [p.strip() for p in _ADDR_SEPARATORS.split(upstream_addr.strip())][:-1]
    statuses = [p.strip() for p in _ADDR_SEPARATORS.split(upstream_status.strip())][:-1]
    return [
        address
        for address, status in zip(addresses, statuses, strict=False)
        if address not in ("", "-") and not (status.isdigit() and int(status) < 500)
    ]


# --- the adapter -------------------------------------------------------------------------------------------


class NginxProxy:
    """The Proxy protocol for nginx, reached through `transport` on the proxy's server (`proxy_host`)."""

    def __init__(
        self,
        transport: Transport,
        spec: ProxySpec,
        proxy_host: str,
        http: httpx.AsyncClient,
        *,
        verify_timeout: float = 3.0,
        poll_interval: float = 0.01,
        settle: float = 0.15,
        observe_workers: bool = True,
        one_command: bool | None = None,
        masters: KnownMasters | None = None,
    ) -> None:
        self.transport = transport
        self.spec = spec
        self.proxy_host = proxy_host
        self.http = http
        self.verify_timeout = verify_timeout
        self.poll_interval = poll_interval
        self.settle = settle
        self.observe_workers = observe_workers
        #: Install, test and reload in one command (files.install_in_one_command): where each round trip
        #: costs (SSH, by default), rather than a read, a write, a rename and two commands.
        self.one_command = isinstance(transport, SshTransport) if one_command is None else one_command
        #: Masters found at earlier changes: the runtime's, shared by the adapters it builds.
        self.masters = KnownMasters() if masters is None else masters
        self._loaded_generation: int | None = None  # last generation this object tested and reloaded
        #: (master pid, workers accepting) just before this object's last reload; None: not known.
        self._before_reload: tuple[int, frozenset[int]] | None = None

    # apply ---------------------------------------------------------------------------------------------
    async def apply(self, table: RouteTable) -> None:
        """Render, install atomically, test, reload. Raises ProxyConfigError or ProxyUnavailableError."""
        try:
            text = render_nginx(table, self.spec)
        except ValueError as exc:
            raise ProxyConfigError(f"cannot render nginx configuration: {exc}") from exc
        async with file_lock(self.spec.server_id, self.spec.config_path):
            try:
                await self._install(text)
            except TransportError as exc:
                raise ProxyUnavailableError(f"nginx on {self.proxy_host}: {exc}") from exc
        self._loaded_generation = table.generation

    async def remove(self, app_id: int) -> None:
        """Deletes the application's include file, tests and reloads; the file is put back on a failure."""
        async with file_lock(self.spec.server_id, self.spec.config_path):
            try:
                await self._install(None)
            except TransportError as exc:
                raise ProxyUnavailableError(f"nginx on {self.proxy_host}: {exc}") from exc
        self._loaded_generation = None

    async def _install(self, text: str | None) -> None:
        """Under the file lock: note the workers accepting now (nginx_workers.py; `verify` waits until they
        stopped accepting) while the file is read, written and tested, then reload."""
        self._before_reload = None
        data = text.encode() if text is not None else None
        if self.one_command and inlinable(data):
            await self._install_in_one_command(data)
            return
        url = self.generation_url() if self.observe_workers else None
        workers = asyncio.ensure_future(snapshot(self.http, url, self.transport)) if url else None

        async def test_and_reload() -> None:
            if self.spec.test_command:
                result = await self._run(self.spec.test_command)
                if not result.ok:
                    raise ProxyConfigError(f"nginx rejected the configuration: {result.tail()}")
            # Taken before the reload, or not at all; and never waited for: when it is not ready by the
            # end of the test, verify falls back to the settle time rather than delay the reload.
            if workers is not None and workers.done() and not workers.cancelled():
                self._before_reload = workers.result()
            result = await self._run(self.spec.reload_command)
            if not result.ok:
                raise ProxyConfigError(f"nginx reload failed (exit {result.exit_status}): {result.tail()}")

        try:
            previous = await read_optional(self.transport, self.spec.config_path)
            await install(self.transport, self.spec.config_path, data, previous, test_and_reload)
        finally:
            if workers is not None and not workers.done():
                workers.cancel()

    async def _install_in_one_command(self, data: bytes | None) -> None:
        """Write, test and reload in one command; the workers accepting before the reload are listed by the
        script itself, just before it reloads: the children of the master found at the last change, else of
        the parent of the worker that answers the probe just now (nginx_workers.py)."""
        url = self.generation_url() if self.observe_workers else None
        master = self.masters.get(url) if url else None
        worker = None
        if url and master is None:
            worker = await answering_worker(self.http, url, WORKER_PROBE_TIMEOUT)
        listing = workers_script(worker=worker, master=master) if worker or master else ""
        path = self.spec.config_path
        result = await install_in_one_command(
            self.transport,
            path,
            data,
            self.spec.test_command,
            self.spec.reload_command,
            COMMAND_TIMEOUT,
            listing,
        )
        step = failed_step(result)
        if step == "test":
            raise ProxyConfigError(f"nginx rejected the configuration: {result.tail()}")
        if step == "reload":
            raise ProxyConfigError(f"nginx reload failed (exit {result.exit_status}): {result.tail()}")
        if step is not None:
            raise TransportError(f"cannot {step} {path} (exit {result.exit_status}): {result.tail()}")
        if url and listing:
            self._before_reload = await reported_workers(
                self.transport, result.stdout, self.http, url, worker, self.masters
            )

    async def _run(self, command: str) -> CommandResult:
        return await self.transport.run(command, timeout=COMMAND_TIMEOUT)

    # verify --------------------------------------------------------------------------------------------
    def generation_url(self) -> str | None:
        """Where the rendered server block answers its generation; None when canaryd owns no server block."""
        if self.spec.listen is None:
            return None
        host, port = _parse_listen(self.spec.listen)
        if host is None or host.strip("[]") in ("0.0.0.0", "::"):
            host = self.proxy_host
        host = host.strip("[]")
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}{GENERATION_PATH}"

    async def verify(self, table: RouteTable) -> bool:
        """True once nginx answers `/.canaryd/generation` with `table.generation` (on a fresh connection)
        and every worker that accepted connections before this object's reload has stopped accepting
        (nginx_workers.py; polled every `poll_interval`, giving up after `verify_timeout`).

        One answer is not enough: after a reload nginx's master lets the old workers go on accepting
        connections for another 100 ms (`ngx_msleep(100)` while it starts the new ones), so new connections
        are split between old and new weights until then. When the workers could not be observed (no /proc,
        another pid namespace, `observe_workers` off, no reload by this object), the new generation must
        instead answer without a break for `settle` seconds.

        Without `listen` nginx cannot be asked: then this only says whether this object's last apply of that
        generation passed the test and the reload command — weaker, since `nginx -s reload` exits 0 even
        when the master then refuses the new configuration (a port in use, say)."""
        url = self.generation_url()
        if url is None:
            return self._loaded_generation == table.generation
        expected = f"{table.generation}\n"

        async def serves_it(remaining: float) -> bool:
            try:
                # Connection: close, so that no pooled keep-alive connection to an old worker is reused.
                response = await self.http.get(
                    url, headers={"Connection": "close"}, timeout=max(0.05, min(1.0, remaining))
                )
            except httpx.HTTPError as exc:
                logger.debug("generation probe %s failed: %s", url, exc)
                return False
            return response.status_code == 200 and response.text == expected

        before = self._before_reload
        if before is None:
            return await poll_until(serves_it, self.verify_timeout, self.poll_interval, self.settle)
        master, old = before

        async def live(remaining: float) -> bool:
            return await serves_it(remaining) and not await still_accepting(self.transport, master, old)

        return await poll_until(live, self.verify_timeout, self.poll_interval)

    async def verify_removed(self, app_id: int) -> bool:
        """True once new connections no longer reach the application's server block (its generation probe
        is refused or answers anything but a generation), without a break for `settle` seconds."""
        url = self.generation_url()
        if url is None:
            return self._loaded_generation is None

        async def gone(remaining: float) -> bool:
            try:
                response = await self.http.get(
                    url, headers={"Connection": "close"}, timeout=max(0.05, min(1.0, remaining))
                )
            except httpx.HTTPError:
                return True
            return not (response.status_code == 200 and response.text.strip().isdigit())

        return await poll_until(gone, self.verify_timeout, self.poll_interval, self.settle)

    async def check(self, table: RouteTable) -> bool:
        """One cheap probe: does nginx still serve `table`'s generation? (Run on every tick, to notice a
        proxy that was restarted or reloaded from other files behind canaryd's back.)"""
        url = self.generation_url()
        if url is None:
            return self._loaded_generation == table.generation
        try:
            response = await self.http.get(url, headers={"Connection": "close"}, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.text == f"{table.generation}\n"

    # read_traffic --------------------------------------------------------------------------------------
    async def traffic_offset(self) -> int:
        """Where the access log ends now: traffic before this point belongs to nobody's stage."""
        if self.spec.access_log is None:
            return 0
        return await log_size(self.transport, self.spec.access_log, self.proxy_host)

    async def read_traffic(
        self, offset: int, cohort_of: Callable[[str], Cohort | None], since: float | None = None
    ) -> TrafficReading:
        """Per-cohort requests logged since `offset`. Only complete lines are consumed; a log smaller than
        `offset` was rotated and is read from its start; a missing log reads as no traffic. `cohort_of` gets
        addresses as nginx writes them (`host:port`, IPv6 in brackets, hostnames already resolved)."""
        path = self.spec.access_log
        if path is None:
            return TrafficReading(ParsedLog().cohorts, offset)
        read = await tail(self.transport, path, offset, self.proxy_host)
        parsed = parse_access_log_lines(read.lines, cohort_of, since)
        if parsed.malformed or parsed.unrouted:
            logger.debug(
                "%s: skipped %d malformed and %d unrouted lines", path, parsed.malformed, parsed.unrouted
            )
        return TrafficReading(parsed.cohorts, read.next_offset)


__all__ = [
    "GENERATION_PATH",
    "MIRROR_PATH",
    "NginxProxy",
    "ParsedLog",
    "format_address",
    "last_upstream",
    "parse_access_log_lines",
    "render_nginx",
]
