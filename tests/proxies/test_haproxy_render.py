"""render_haproxy and the pure parsers of the HAProxy adapter: tables, no HAProxy needed."""

from __future__ import annotations

import json

import pytest

from canaryd.domain.config import ProxySpec
from canaryd.domain.types import Backend, Cohort, bucket_of
from canaryd.proxies.base import RouteTable
from canaryd.proxies.haproxy import (
    HaproxyCounters,
    all_expected_weights,
    counter_deltas,
    declared_servers,
    declared_weights,
    frontend_fingerprint,
    parse_log_lines,
    parse_servers_state,
    parse_show_stat,
    render_haproxy,
    runtime_matches,
    structure,
)


def spec(**overrides: object) -> ProxySpec:
    fields: dict[str, object] = {
        "kind": "haproxy",
        "server_id": 1,
        "config_path": "/etc/haproxy/conf.d/app.cfg",
        "reload_command": "kill -USR2 $(cat /run/haproxy.pid)",
        "runtime_socket": "/run/haproxy/admin.sock",
        "listen": "127.0.0.1:8080",
    }
    fields.update(overrides)
    return ProxySpec.model_validate(fields)


def table(*backends: Backend, generation: int = 3, app_id: int = 7) -> RouteTable:
    return RouteTable(app_id=app_id, app_name="shop", backends=backends, generation=generation)


CANARY = Backend(1, "127.0.0.2", 9000, 4, "canary")
STABLE = [Backend(i, f"127.0.0.{i + 1}", 9000, 3, "stable") for i in range(2, 6)]


def server_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip().startswith("server ")]


def test_backend_has_one_weighted_server_per_backend() -> None:
    """Every route-table server becomes `server s<id> host:port weight N` in canaryd_app_<id>."""
    text = render_haproxy(table(CANARY, *STABLE), spec())
    assert "backend canaryd_app_7" in text
    assert "    balance roundrobin" in text
    assert server_lines(text) == [
        "server s1 127.0.0.2:9000 weight 4",
        *(f"server s{i} 127.0.0.{i + 1}:9000 weight 3" for i in range(2, 6)),
    ]
    assert "generation 3" in text


def test_frontend_only_with_listen() -> None:
    """`listen` renders a frontend with bind, default_backend and the marker; without it there is none."""
    with_fe = render_haproxy(table(CANARY), spec())
    assert "frontend canaryd_fe_7" in with_fe
    assert "    bind 127.0.0.1:8080" in with_fe
    assert "    default_backend canaryd_app_7" in with_fe
    assert f'string "{frontend_fingerprint(7, spec())}" if {{ path /.canaryd/haproxy }}' in with_fe
    without = render_haproxy(table(CANARY), spec(listen=None))
    assert "frontend" not in without
    assert frontend_fingerprint(7, spec(listen=None)) is None


@pytest.mark.parametrize(
    ("listen", "bind"),
    [("8080", ":8080"), ("0.0.0.0:81", "0.0.0.0:81"), ("[::1]:8080", "[::1]:8080")],
)
def test_bind_forms(listen: str, bind: str) -> None:
    """Each listen form becomes the matching HAProxy bind address."""
    assert f"    bind {bind}\n" in render_haproxy(table(CANARY), spec(listen=listen))


def test_fingerprint_changes_with_the_frontend() -> None:
    """The marker's fingerprint differs when the bind or the logging differs."""
    a = frontend_fingerprint(7, spec())
    assert a == frontend_fingerprint(7, spec())
    assert a != frontend_fingerprint(7, spec(listen="127.0.0.1:8081"))
    assert a != frontend_fingerprint(7, spec(access_log="/var/log/haproxy-app.log"))
    assert a != frontend_fingerprint(8, spec())


def test_access_log_renders_json_log_format() -> None:
    """With access_log the frontend logs through `log global` with the JSON log-format."""
    text = render_haproxy(table(CANARY), spec(access_log="/var/log/haproxy-app.log"))
    assert "    log global" in text
    assert 'log-format "{\\"time\\":%Ts.%ms,\\"status\\":%ST,' in text
    assert "log-format" not in render_haproxy(table(CANARY), spec())


def test_weight_zero_and_retained_servers_stay_declared() -> None:
    """A table server at weight 0 and a server only in the previous file are both declared at weight 0."""
    drained = Backend(1, "127.0.0.2", 9000, 0, "canary")
    text = render_haproxy(table(drained, STABLE[0]), spec(), retained={9: ("127.0.0.10", 9000)})
    assert server_lines(text) == [
        "server s1 127.0.0.2:9000 weight 0",
        "server s2 127.0.0.3:9000 weight 3",
        "server s9 127.0.0.10:9000 weight 0",
    ]


def test_retained_server_with_a_taken_address_is_dropped() -> None:
    """A retained server whose address now belongs to a table server is not declared twice."""
    text = render_haproxy(table(CANARY), spec(), retained={5: ("127.0.0.2", 9000), 1: ("127.0.0.99", 1)})
    assert server_lines(text) == ["server s1 127.0.0.2:9000 weight 4"]


def test_ipv6_servers_in_brackets() -> None:
    """IPv6 servers are written in brackets."""
    text = render_haproxy(table(Backend(1, "::1", 9000, 1, "stable")), spec())
    assert server_lines(text) == ["server s1 [::1]:9000 weight 1"]


@pytest.mark.parametrize(
    "bad",
    [
        table(Backend(1, "127.0.0.2 backup", 9000, 1, "stable")),
        table(Backend(1, "h#x", 9000, 1, "stable")),
        table(Backend(1, 'h"x', 9000, 1, "stable")),
        table(Backend(1, "h%[src]", 9000, 1, "stable")),
        table(Backend(1, "127.0.0.2\nbackend evil", 9000, 1, "stable")),
        table(Backend(1, "127.0.0.2", 0, 1, "stable")),
        table(Backend(1, "127.0.0.2", 9000, 257, "stable")),
        table(Backend(1, "127.0.0.2", 9000, -1, "stable")),
        table(Backend(1, "127.0.0.2", 9000, 0, "stable")),  # nothing would get traffic
        table(),
        table(Backend(1, "127.0.0.2", 9000, 1, "stable"), Backend(1, "127.0.0.3", 9000, 1, "stable")),
        table(Backend(1, "127.0.0.2", 9000, 1, "stable"), Backend(2, "127.0.0.2", 9000, 1, "stable")),
        table(CANARY, app_id=-1),
    ],
)
def test_rejects_unsafe_or_impossible_tables(bad: RouteTable) -> None:
    """Anything that could inject syntax or that HAProxy would refuse raises ValueError."""
    with pytest.raises(ValueError):
        render_haproxy(bad, spec())


@pytest.mark.parametrize(
    "field",
    [{"listen": "8080 ssl crt /x"}, {"access_log": "/var/log/a b"}, {"access_log": "relative.log"}],
)
def test_rejects_unsafe_spec_values(field: dict[str, object]) -> None:
    """Unsafe listen or access_log values never reach the file (pydantic or the renderer refuses them)."""
    with pytest.raises(ValueError):
        render_haproxy(table(CANARY), spec().model_copy(update=field))


def test_max_weight_above_256_refused_for_haproxy() -> None:
    """HAProxy weights stop at 256, and HAProxy needs its admin socket."""
    with pytest.raises(ValueError, match="at most 256"):
        spec(max_weight=300)
    with pytest.raises(ValueError, match="runtime_socket"):
        spec(runtime_socket=None)
    assert spec().weight_limit == 256


def test_structure_ignores_weights_and_comments_only() -> None:
    """Two renders differing only in weights and generation have the same structure; a new server does not."""
    a = render_haproxy(table(CANARY, *STABLE, generation=1), spec())
    b = render_haproxy(
        table(Backend(1, "127.0.0.2", 9000, 1, "canary"), *STABLE[:3], generation=2),
        spec(),
        retained=declared_servers(a),
    )
    assert structure(a) == structure(b)
    assert a != b
    c = render_haproxy(table(CANARY, *STABLE[:3]), spec())
    assert structure(a) != structure(c)
    assert structure(a) != structure(render_haproxy(table(CANARY, *STABLE), spec(listen="9090")))


def test_declared_servers_reads_back_the_render() -> None:
    """declared_servers parses exactly the servers a render wrote, IPv6 included."""
    text = render_haproxy(table(CANARY, Backend(4, "::1", 81, 2, "stable")), spec())
    assert declared_servers(text) == {1: ("127.0.0.2", 9000), 4: ("::1", 81)}


STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 canaryd_app_7 1 s1 127.0.0.2 2 0 4 4 0 6 3 4 6 0 0 0 - 9000 - 0 0 - - 0
3 canaryd_app_7 2 s2 127.0.0.3 2 0 3 1 0 6 3 4 6 0 0 0 - 9000 - 0 0 - - 0
3 canaryd_app_7 3 s9 127.0.0.10 2 0 0 0 0 6 3 4 6 0 0 0 - 9000 - 0 0 - - 0
"""


def test_servers_state_and_runtime_match() -> None:
    """`show servers state` parses to weights; runtime_matches wants table weights and 0 elsewhere."""
    servers = parse_servers_state(STATE)
    assert servers is not None
    assert {n: s.weight for n, s in servers.items()} == {"s1": 4, "s2": 3, "s9": 0}
    assert runtime_matches(servers, table(CANARY, STABLE[0]))
    assert not runtime_matches(servers, table(CANARY))  # s2 has weight 3 but should get nothing
    assert not runtime_matches(servers, table(CANARY, Backend(2, "127.0.0.3", 9000, 2, "stable")))
    assert not runtime_matches(servers, table(CANARY, Backend(2, "127.0.0.4", 9000, 3, "stable")))
    assert not runtime_matches(servers, table(CANARY, STABLE[0], STABLE[1]))  # s3 unknown to HAProxy
    assert parse_servers_state("Can't find backend.\n") is None
    assert not runtime_matches(None, table(CANARY))


STAT = (
    "# pxname,svname,qcur,stot,hrsp_5xx,rtime,addr,\n"
    "canaryd_fe_7,FRONTEND,0,99,0,,,\n"
    "canaryd_app_7,s1,0,40,4,12,127.0.0.2:9000,\n"
    "canaryd_app_7,s2,0,100,0,3,127.0.0.3:9000,\n"
    "other,s1,0,5,5,1,127.0.0.2:9000,\n"
    "canaryd_app_7,BACKEND,0,140,4,5,,\n"
)


def cohort_of(address: str) -> Cohort | None:
    return {"127.0.0.2:9000": "canary", "127.0.0.3:9000": "stable"}.get(address)  # type: ignore[return-value]


def test_show_stat_counters_and_deltas() -> None:
    """`show stat` rows of the backend's servers become per-cohort deltas at the servers' average latency."""
    after = parse_show_stat(STAT, "canaryd_app_7")
    assert after == {
        "127.0.0.2:9000": HaproxyCounters(40, 4, 12.0),
        "127.0.0.3:9000": HaproxyCounters(100, 0, 3.0),
    }
    before = {"127.0.0.2:9000": HaproxyCounters(30, 1, 10.0), "127.0.0.3:9000": HaproxyCounters(60, 0, 3.0)}
    got = counter_deltas(before, after, True, cohort_of)
    assert (got["canary"].requests, got["canary"].errors) == (10, 3)
    assert got["canary"].latency_buckets == {bucket_of(12.0): 10}
    assert (got["stable"].requests, got["stable"].errors) == (40, 0)
    # Another HAProxy process: its counters started at 0, so all of them are new.
    fresh = counter_deltas(before, after, False, cohort_of)
    assert (fresh["canary"].requests, fresh["stable"].requests) == (40, 100)
    # Counters below the snapshot mean a restart that the pid did not reveal: count from 0 too.
    reset = counter_deltas({"127.0.0.2:9000": HaproxyCounters(400, 0, 1.0)}, after, True, cohort_of)
    assert reset["canary"].requests == 40


def test_log_lines_per_cohort() -> None:
    """JSON log lines count per cohort; syslog headers, NOSRV lines and garbage are skipped."""
    line = {
        "time": 1.5,
        "status": 200,
        "request_time_ms": 7,
        "response_time_ms": 6,
        "upstream_addr": "127.0.0.2:9000",
        "server": "s1",
        "method": "GET",
    }
    lines = [
        json.dumps(line),
        "Mar  3 12:00:00 host haproxy[12]: " + json.dumps({**line, "status": 503}),
        json.dumps({**line, "upstream_addr": "127.0.0.3:9000", "request_time_ms": 30}),
        json.dumps({**line, "upstream_addr": "-:-", "server": "<NOSRV>"}),
        json.dumps({**line, "upstream_addr": "127.0.0.9:9000"}),
        "not json",
        json.dumps({**line, "status": -1}),
        "",
    ]
    parsed = parse_log_lines(lines, cohort_of)
    assert (parsed.cohorts["canary"].requests, parsed.cohorts["canary"].errors) == (2, 1)
    assert parsed.cohorts["stable"].requests == 1
    assert parsed.cohorts["stable"].latency_buckets == {bucket_of(30.0): 1}
    assert (parsed.unrouted, parsed.malformed) == (2, 2)


def test_sticky_renders_cookie_persistence_that_skips_weight_zero_servers() -> None:
    """sticky: cookie `canaryd_<id>` pins a client to its server (`cookie s<id>`), ignored (and re-pinned)
    while that server's live weight is 0."""
    drained = Backend(1, "127.0.0.2", 9000, 0, "canary")
    text = render_haproxy(table(drained, STABLE[0]), spec(sticky=True), retained={9: ("127.0.0.10", 9000)})
    assert "    cookie canaryd_7 insert indirect nocache httponly attr SameSite=Lax\n" in text
    assert server_lines(text) == [
        "server s1 127.0.0.2:9000 weight 0 cookie s1",
        "server s2 127.0.0.3:9000 weight 3 cookie s2",
        "server s9 127.0.0.10:9000 weight 0 cookie s9",
    ]
    for sid in (1, 2, 9):
        assert (
            f"    ignore-persist if {{ req.cook(canaryd_7) -m str s{sid} }} "
            f"{{ srv_weight(canaryd_app_7/s{sid}) eq 0 }}\n"
        ) in text
    assert 'add-header Set-Cookie "canaryd_7=%[srv_name]; path=/; HttpOnly; SameSite=Lax"' in text
    plain = render_haproxy(table(drained, STABLE[0]), spec())
    assert "cookie" not in plain and "use_backend" not in plain
    assert structure(text) != structure(plain)  # turning stickiness on reloads


def test_force_header_renders_cohort_backends_and_a_fallback() -> None:
    """force_header: use_backend per cohort only while it has a usable server; the cohort backends declare
    every server (the other cohort at weight 0)."""
    text = render_haproxy(table(CANARY, STABLE[0]), spec(force_header="X-Canary"))
    assert (
        "    use_backend canaryd_app_7_canary if { req.hdr(X-Canary) -i always } "
        "{ nbsrv(canaryd_app_7_canary) gt 0 }\n"
    ) in text
    assert "{ req.hdr(X-Canary) -i never } { nbsrv(canaryd_app_7_stable) gt 0 }" in text
    assert text.index("http-request return") < text.index("use_backend") < text.index("default_backend")
    assert declared_weights(text) == {
        "canaryd_app_7": {"s1": 4, "s2": 3},
        "canaryd_app_7_canary": {"s1": 4, "s2": 0},
        "canaryd_app_7_stable": {"s1": 0, "s2": 3},
    }
    assert "    server s2 127.0.0.3:9000 weight 0  # stable server 2" in text
    assert " check" not in text and " track " not in text  # no HAProxy health checks: canaryd checks
    assert all_expected_weights(table(CANARY, STABLE[0]), [1, 2, 9], spec(force_header="X-Canary")) == {
        "canaryd_app_7": {"s1": 4, "s2": 3, "s9": 0},
        "canaryd_app_7_canary": {"s1": 4, "s2": 0, "s9": 0},
        "canaryd_app_7_stable": {"s1": 0, "s2": 3, "s9": 0},
    }
    # A new stage is a weight change in all three backends, not a new structure.
    later = render_haproxy(
        table(Backend(1, "127.0.0.2", 9000, 0, "canary"), STABLE[0]), spec(force_header="X-Canary")
    )
    assert structure(later) == structure(text)
    assert frontend_fingerprint(7, spec(force_header="X-Canary")) != frontend_fingerprint(7, spec())


def test_cohort_backend_runtime_match() -> None:
    """runtime_matches for a cohort's backend wants the other cohort's servers at weight 0."""
    servers = parse_servers_state(STATE)
    assert servers is not None
    assert not runtime_matches(servers, table(CANARY, STABLE[0]), "canary")  # s2 must be 0 there
    stable_only = parse_servers_state(STATE.replace(" 2 0 4 4 0 ", " 2 0 0 4 0 "))
    assert stable_only is not None
    assert runtime_matches(stable_only, table(CANARY, STABLE[0]), "stable")


@pytest.mark.parametrize("header", ["X Canary", "X-Canary}", "X-Canary#", "X-Can%ary", "-X", "X_Canary"])
def test_force_header_injection_refused_by_the_renderer(header: str) -> None:
    """A force_header that slipped past pydantic never reaches the file."""
    with pytest.raises(ValueError, match="force_header"):
        render_haproxy(table(CANARY), spec().model_copy(update={"force_header": header}))
