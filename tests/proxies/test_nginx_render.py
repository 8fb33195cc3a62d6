"""The nginx renderer and the access-log parser: pure functions, table-tested."""

from __future__ import annotations

import json

import pytest

from canaryd.domain.config import ProxySpec
from canaryd.domain.types import Backend, Cohort
from canaryd.proxies.base import RouteTable
from canaryd.proxies.nginx import last_upstream, parse_access_log_lines, render_nginx

SPEC = ProxySpec(
    kind="nginx",
    server_id=1,
    config_path="/etc/nginx/conf.d/app.conf",
    reload_command="nginx -s reload",
    test_command="nginx -t",
    listen="127.0.0.1:8080",
    access_log="/var/log/nginx/canaryd-app.log",
)


def table(*backends: Backend, generation: int = 7, name: str = "shop", app_id: int = 3) -> RouteTable:
    return RouteTable(app_id=app_id, app_name=name, backends=backends, generation=generation)


CANARY = Backend(1, "127.0.0.2", 8001, 4, "canary")
STABLE = Backend(2, "127.0.0.3", 8001, 3, "stable")


def test_weights_rendered_per_server() -> None:
    """Every backend appears once with its own integer weight and max_fails=0."""
    text = render_nginx(table(CANARY, STABLE), SPEC)
    assert "server 127.0.0.2:8001 weight=4 max_fails=0;" in text
    assert "server 127.0.0.3:8001 weight=3 max_fails=0;" in text
    assert "upstream canaryd_app_3 {" in text
    assert "weight=0" not in text


def test_upstream_keepalive_is_opt_in() -> None:
    """By default nginx opens a connection per request; `upstream_keepalive` turns pooling on."""
    plain = render_nginx(table(CANARY, STABLE), SPEC)
    assert "keepalive" not in plain and "proxy_http_version" not in plain
    pooled = render_nginx(table(CANARY, STABLE), SPEC.model_copy(update={"upstream_keepalive": 16}))
    assert "    keepalive 16;" in pooled and "proxy_http_version 1.1;" in pooled


def test_absent_server_is_absent() -> None:
    """A server missing from the table (a cohort at 0 %) is missing from the upstream."""
    text = render_nginx(table(STABLE), SPEC)
    assert "127.0.0.2" not in text
    assert sum(1 for ln in text.splitlines() if ln.startswith("    server ")) == 1


def test_ipv6_hosts_in_brackets() -> None:
    """IPv6 backends are bracketed and normalised, as nginx writes them in $upstream_addr."""
    text = render_nginx(
        table(Backend(1, "::1", 9000, 1, "stable"), Backend(2, "[fd00::0001]", 9000, 2, "canary")), SPEC
    )
    assert "server [::1]:9000 weight=1" in text
    assert "server [fd00::1]:9000 weight=2" in text


def test_generation_in_header_and_probe() -> None:
    """The generation is in the header comment and in the /.canaryd/generation answer."""
    text = render_nginx(table(STABLE, generation=42), SPEC)
    assert text.startswith("# managed by canaryd, generation 42 — do not edit\n")
    assert "location = /.canaryd/generation {" in text
    assert 'return 200 "42\\n";' in text


def test_server_block_and_log_format() -> None:
    """With `listen` the server block proxies to the upstream and logs in the app's JSON format."""
    text = render_nginx(table(STABLE), SPEC)
    assert "listen 127.0.0.1:8080;" in text
    assert 'access_log "/var/log/nginx/canaryd-app.log" canaryd_3;' in text
    assert "proxy_pass http://canaryd_app_3;" in text
    assert "proxy_next_upstream error timeout;" in text
    fmt = next(line for line in text.splitlines() if line.startswith("log_format"))
    assert fmt.startswith("log_format canaryd_3 escape=json '{")
    for var in (
        "$msec",
        "$status",
        "$request_time",
        "$upstream_addr",
        "$upstream_status",
        "$upstream_response_time",
        "$request_method",
    ):
        assert var in fmt


def test_no_listen_means_no_server_block() -> None:
    """Without `listen` only the log format and the upstream are rendered."""
    text = render_nginx(table(STABLE), SPEC.model_copy(update={"listen": None}))
    assert "server {" not in text
    assert "listen" not in text


def test_app_name_only_in_a_sanitised_comment() -> None:
    """A hostile application name is reduced to safe characters and appears only in a comment."""
    text = render_nginx(table(STABLE, name='x"; } server { listen 80; #\n evil'), SPEC)
    name_lines = [line for line in text.splitlines() if "evil" in line]
    assert len(name_lines) == 1 and name_lines[0].startswith("# application 3 (")
    assert "listen 80" not in text and ";_" not in name_lines[0] and "\n evil" not in text


@pytest.mark.parametrize(
    "backend",
    [
        Backend(1, "127.0.0.1;", 80, 1, "stable"),
        Backend(1, "a b", 80, 1, "stable"),
        Backend(1, "host}", 80, 1, "stable"),
        Backend(1, "host#x", 80, 1, "stable"),
        Backend(1, "h'x", 80, 1, "stable"),
        Backend(1, 'h"x', 80, 1, "stable"),
        Backend(1, "h\x00x", 80, 1, "stable"),
        Backend(1, "h\nserver evil:1", 80, 1, "stable"),
        Backend(1, "$host", 80, 1, "stable"),
        Backend(1, "under_score.example", 80, 1, "stable"),
        Backend(1, "127.0.0.1", 0, 1, "stable"),
        Backend(1, "127.0.0.1", 70000, 1, "stable"),
        Backend(1, "127.0.0.1", 80, 0, "stable"),
        Backend(1, "127.0.0.1", 80, -1, "stable"),
        Backend(1, "127.0.0.1", 80, 1001, "stable"),
    ],
)
def test_hostile_backend_values_raise(backend: Backend) -> None:
    """Backends that could inject syntax or that nginx would refuse raise ValueError."""
    with pytest.raises(ValueError):
        render_nginx(table(backend), SPEC)


@pytest.mark.parametrize(
    "update",
    [
        {"listen": "127.0.0.1:80; evil"},
        {"listen": "80 default_server"},
        {"access_log": "/tmp/a log"},
        {"access_log": "/tmp/a;b"},
        {"access_log": "/tmp/$host"},
        {"access_log": '/tmp/a"b'},
        {"access_log": "relative/path"},
    ],
)
def test_hostile_spec_values_raise(update: dict[str, str]) -> None:
    """Spec values that slipped past validation still never reach the file."""
    with pytest.raises(ValueError):
        render_nginx(table(STABLE), SPEC.model_copy(update=update))


@pytest.mark.parametrize(
    "bad",
    [
        table(),
        table(STABLE, STABLE),
        table(STABLE, generation=-1),
        table(STABLE, app_id=True),
        table(STABLE, app_id="1; evil"),  # type: ignore[arg-type]
    ],
)
def test_impossible_tables_raise(bad: RouteTable) -> None:
    """No servers, duplicates, negative generations and non-integer ids raise ValueError."""
    with pytest.raises(ValueError):
        render_nginx(bad, SPEC)


def test_render_is_deterministic() -> None:
    """The same table renders to the same bytes (apply is idempotent)."""
    assert render_nginx(table(CANARY, STABLE), SPEC) == render_nginx(table(CANARY, STABLE), SPEC)


# --- access log -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.2:8001", "127.0.0.2:8001"),
        ("127.0.0.2:8001, 127.0.0.3:8001", "127.0.0.3:8001"),
        ("127.0.0.2:8001, 127.0.0.3:8001 : 127.0.0.4:9000", "127.0.0.4:9000"),
        ("[::1]:8001", "[::1]:8001"),
        ("-", None),
        ("", None),
        ("canaryd_app_3", "canaryd_app_3"),
    ],
)
def test_last_upstream(addr: str, expected: str | None) -> None:
    """The answering server is the last address nginx tried."""
    assert last_upstream(addr) == expected


COHORTS: dict[str, Cohort] = {"127.0.0.2:8001": "canary", "127.0.0.3:8001": "stable"}


def line(status: int, addr: str, rt: str = "0.010", **extra: str) -> bytes:
    entry = {
        "time": "1700000000.000",
        "status": str(status),
        "request_time": rt,
        "upstream_addr": addr,
        "upstream_status": str(status),
        "upstream_response_time": rt,
        "method": "GET",
        **extra,
    }
    return json.dumps(entry).encode()


@pytest.mark.parametrize(
    ("lines", "canary", "stable", "malformed", "unrouted"),
    [
        ([line(200, "127.0.0.2:8001")], (1, 0), (0, 0), 0, 0),
        ([line(500, "127.0.0.2:8001"), line(200, "127.0.0.3:8001")], (1, 1), (1, 0), 0, 0),
        ([line(502, "127.0.0.2:8001, 127.0.0.3:8001")], (0, 0), (1, 1), 0, 0),  # retried: last one counts
        ([line(502, "127.0.0.2:8001")], (1, 1), (0, 0), 0, 0),  # nginx-generated 502 still counts
        ([line(504, "127.0.0.3:8001")], (0, 0), (1, 1), 0, 0),
        ([line(404, "-"), line(200, "")], (0, 0), (0, 0), 0, 2),
        ([line(200, "10.9.9.9:1")], (0, 0), (0, 0), 0, 1),
        (
            [
                b"not json",
                b"[1]",
                b'{"status":"x","request_time":"1"}',
                b"\xff\xfe",
                b'{"status":"200"}',
                b'{"status":"200","request_time":"nan"}',
                b'{"status":"0","request_time":"1"}',
            ],
            (0, 0),
            (0, 0),
            7,
            0,
        ),
        ([b"", b"   "], (0, 0), (0, 0), 0, 0),
        ([line(200, "127.0.0.2:8001").decode()], (1, 0), (0, 0), 0, 0),
    ],
)
def test_parse_access_log_lines(
    lines: list[bytes | str], canary: tuple[int, int], stable: tuple[int, int], malformed: int, unrouted: int
) -> None:
    """Requests and 5xx errors are counted per cohort; bad lines are counted, never raised."""
    parsed = parse_access_log_lines(lines, COHORTS.get)
    assert (parsed.cohorts["canary"].requests, parsed.cohorts["canary"].errors) == canary
    assert (parsed.cohorts["stable"].requests, parsed.cohorts["stable"].errors) == stable
    assert (parsed.malformed, parsed.unrouted) == (malformed, unrouted)


def test_latency_from_request_time() -> None:
    """Latency is $request_time in milliseconds."""
    parsed = parse_access_log_lines([line(200, "127.0.0.3:8001", rt="0.250")] * 10, COHORTS.get)
    p50 = parsed.cohorts["stable"].quantile_ms(0.5)
    assert p50 is not None and 250 <= p50 <= 250 * 1.06


def test_ipv6_addresses_found_with_or_without_brackets() -> None:
    """An IPv6 upstream maps to its cohort whether cohort_of keys it as '[::1]:80' or '::1:80'."""
    lines = [line(200, "[::1]:8001"), line(200, "[fd00::2]:8001")]
    cohorts: dict[str, Cohort] = {"::1:8001": "canary", "[fd00::2]:8001": "stable"}
    parsed = parse_access_log_lines(lines, cohorts.get)
    assert parsed.cohorts["canary"].requests == parsed.cohorts["stable"].requests == 1


# --- stickiness and forced routing --------------------------------------------------------------------------

ROUTED = SPEC.model_copy(update={"sticky": True, "force_header": "X-Canary"})
STABLE2 = Backend(4, "127.0.0.4", 8001, 3, "stable")


def upstream_servers(text: str, name: str) -> list[str]:
    """The `server` lines of upstream `name`."""
    block = text.split(f"upstream {name} {{\n", 1)[1].split("}", 1)[0]
    return [ln.split()[1] for ln in block.splitlines() if ln.startswith("    server ")]


def test_plain_spec_routes_through_the_weighted_upstream_only() -> None:
    """Without sticky or force_header there are no cohort upstreams and no maps."""
    text = render_nginx(table(CANARY, STABLE), SPEC)
    assert "map " not in text and "_canary {" not in text and "Set-Cookie" not in text


def test_cohort_upstreams_and_routing_maps() -> None:
    """Sticky + forced: one upstream per cohort, maps picking one, proxy_pass through the variable."""
    text = render_nginx(table(CANARY, STABLE, STABLE2, generation=12), ROUTED)
    assert upstream_servers(text, "canaryd_app_3") == ["127.0.0.2:8001", "127.0.0.3:8001", "127.0.0.4:8001"]
    assert upstream_servers(text, "canaryd_app_3_canary") == ["127.0.0.2:8001"]
    assert upstream_servers(text, "canaryd_app_3_stable") == ["127.0.0.3:8001", "127.0.0.4:8001"]
    assert 'map $http_x_canary $canaryd_forced_3 {\n    default "";\n    always c;\n    never s;\n}' in text
    assert 'map $cookie_canaryd_3 $canaryd_kept_3 {\n    default "";\n    c.12 c;\n    s.12 s;\n}' in text
    assert '    "~(^|\\s)127\\.0\\.0\\.2:8001$" c;' in text
    assert '    "~(^|\\s)127\\.0\\.0\\.4:8001$" s;' in text
    assert '    ":c" "canaryd_3=c.12; Path=/; HttpOnly; SameSite=Lax";' in text
    route = text.split('map "$canaryd_forced_3$canaryd_kept_3" $canaryd_upstream_3 {\n', 1)[1].split("}")[0]
    assert route.split("\n")[0] == "    default canaryd_app_3;"
    # The forced cohort (first letter) wins over the cookie's.
    assert "    cs canaryd_app_3_canary;" in route and "    sc canaryd_app_3_stable;" in route
    assert "proxy_pass http://$canaryd_upstream_3;" in text
    assert "add_header Set-Cookie $canaryd_set_cookie_3 always;" in text


def test_cookie_carries_the_generation() -> None:
    """A new generation (a new stage) invalidates the previous cookies, so users are split afresh."""
    old = render_nginx(table(CANARY, STABLE, generation=12), ROUTED)
    new = render_nginx(table(CANARY, STABLE, generation=13), ROUTED)
    assert "    c.13 c;" in new and "c.12" not in new and "    c.12 c;" in old


@pytest.mark.parametrize(
    ("backends", "canary_up", "stable_up"),
    [
        ((STABLE, STABLE2), ["127.0.0.3:8001", "127.0.0.4:8001"], ["127.0.0.3:8001", "127.0.0.4:8001"]),
        ((CANARY,), ["127.0.0.2:8001"], ["127.0.0.2:8001"]),
    ],
    ids=["no canary (0 %)", "no stable (100 %)"],
)
def test_empty_cohort_falls_back_to_the_other(
    backends: tuple[Backend, ...], canary_up: list[str], stable_up: list[str]
) -> None:
    """A cohort with no server gets the other cohort's servers: forcing it never meets an empty upstream."""
    text = render_nginx(table(*backends), ROUTED)
    assert upstream_servers(text, "canaryd_app_3_canary") == canary_up
    assert upstream_servers(text, "canaryd_app_3_stable") == stable_up


def test_forced_routing_without_stickiness() -> None:
    """force_header alone: the header map decides, no cookie is read or set."""
    text = render_nginx(table(CANARY, STABLE), SPEC.model_copy(update={"force_header": "X-Beta-Tester"}))
    assert "map $http_x_beta_tester $canaryd_forced_3 {" in text
    assert "cookie" not in text.lower()
    assert 'map "$canaryd_forced_3" $canaryd_upstream_3 {' in text
    assert "    c canaryd_app_3_canary;" in text and "    cs " not in text


def test_stickiness_without_forced_routing() -> None:
    """sticky alone: the cookie map decides, no request header is read."""
    text = render_nginx(table(CANARY, STABLE), SPEC.model_copy(update={"sticky": True}))
    assert "$http_" not in text
    assert 'map "$canaryd_kept_3:$canaryd_got_3" $canaryd_set_cookie_3 {' in text
    assert 'map "$canaryd_kept_3" $canaryd_upstream_3 {' in text


def test_ipv6_backends_in_the_answer_map() -> None:
    """IPv6 addresses are matched as nginx writes them in $upstream_addr, brackets escaped."""
    text = render_nginx(table(Backend(1, "::1", 9000, 1, "canary"), STABLE), ROUTED)
    assert '    "~(^|\\s)\\[::1\\]:9000$" c;' in text


@pytest.mark.parametrize(
    "header", ["X-Canary;", "X Canary", "X-Canary}", "$http_host", "-X", "X_Canary", 'X"', "X\nY", ""]
)
def test_hostile_force_header_raises(header: str) -> None:
    """A force_header that slipped past validation never reaches the file."""
    with pytest.raises(ValueError, match="force_header"):
        render_nginx(table(STABLE), SPEC.model_copy(update={"force_header": header}))


def test_unknown_cohort_raises() -> None:
    """A backend whose cohort is neither canary nor stable cannot be placed in a cohort upstream."""
    with pytest.raises(ValueError, match="cohort"):
        render_nginx(table(Backend(1, "127.0.0.2", 80, 1, "other")), ROUTED)  # type: ignore[arg-type]


def test_retried_attempts_charge_the_server_that_failed() -> None:
    """A request nginx retried on stable after the canary refused it counts an error against the canary."""
    line = (
        '{"status":"200","request_time":"0.004","upstream_addr":"127.0.0.2:8001, 127.0.0.3:8001",'
        '"upstream_status":"502, 200"}'
    )
    cohorts = {"127.0.0.2:8001": "canary", "127.0.0.3:8001": "stable"}
    parsed = parse_access_log_lines([line], lambda a: cohorts.get(a))  # type: ignore[arg-type,return-value]
    assert (parsed.cohorts["stable"].requests, parsed.cohorts["stable"].errors) == (1, 0)
    assert (parsed.cohorts["canary"].requests, parsed.cohorts["canary"].errors) == (1, 1)


def test_lines_logged_before_the_stage_are_not_counted() -> None:
    """Traffic logged before the current stage began (an earlier split) does not count for the stage."""
    lines = [
        '{"time":"100.000","status":"200","request_time":"0.001","upstream_addr":"127.0.0.3:8001"}',
        '{"time":"101.500","status":"200","request_time":"0.001","upstream_addr":"127.0.0.2:8001"}',
    ]
    cohorts = {"127.0.0.2:8001": "canary", "127.0.0.3:8001": "stable"}
    parsed = parse_access_log_lines(lines, lambda a: cohorts.get(a), since=101.0)  # type: ignore[arg-type,return-value]
    assert (parsed.cohorts["canary"].requests, parsed.cohorts["stable"].requests) == (1, 0)
