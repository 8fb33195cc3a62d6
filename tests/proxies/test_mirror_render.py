"""Strategy mirror in nginx's configuration (pure renderer) and access log: what nginx is given, the
clients' lines read by their upstream's time, and the other proxies refusing to render a mirror."""

from __future__ import annotations

import json

import pytest

from canaryd.domain.config import ProxySpec
from canaryd.domain.types import Backend
from canaryd.proxies.base import RouteTable
from canaryd.proxies.haproxy import render_haproxy
from canaryd.proxies.nginx import parse_access_log_lines, render_nginx
from canaryd.proxies.traefik import expected_weights, render_traefik

from .test_ab_render import spec


def table(percent: int = 20, *, cohort: str = "canary") -> RouteTable:
    return RouteTable(
        3,
        "shop",
        (
            Backend(1, "10.0.0.1", 8000, 1, "canary" if cohort == "canary" else "stable", (), percent),
            Backend(2, "10.0.0.2", 8000, 1, "stable"),
            Backend(3, "10.0.0.3", 8000, 1, "stable"),
        ),
        7,
    )


def nginx_spec(**extra: object) -> ProxySpec:
    return spec("nginx", access_log="/var/log/nginx/shop.json", **extra)


def test_nginx_mirrors_a_drawn_share_to_an_internal_location() -> None:
    """The canary is only in its mirror upstream; the proxying location mirrors every request to an
    internal location that proxies the drawn share (split_clients over $request_id) to it and answers the
    others 204 itself, unlogged; the copies' lines are logged (log_subrequest), the clients' are marked."""
    text = render_nginx(table(20), nginx_spec(upstream_keepalive=8))
    weighted = text.split("upstream canaryd_app_3 {")[1].split("}")[0]
    assert "10.0.0.1" not in weighted and "10.0.0.2:8000 weight=1" in weighted
    mirror = text.split("upstream canaryd_app_3_mirror {")[1].split("}")[0]
    assert mirror.strip().splitlines()[0] == "server 10.0.0.1:8000 max_fails=0;  # canary server 1, mirror"
    assert 'split_clients "${request_id}" $canaryd_mirror_3 {\n    20% c;\n    * "";\n}' in text
    assert "log_format canaryd_3_client escape=json" in text and ',"mirrored":"1"}' in text
    location = text.split("    location / {")[1].split("    }")[0]
    assert "        mirror /.canaryd/mirror;\n        mirror_request_body on;" in location
    assert 'access_log "/var/log/nginx/shop.json" canaryd_3_client;' in location
    inner = text.split("    location = /.canaryd/mirror {")[1].split("\n    }")[0]
    for line in (
        "internal;",
        "log_subrequest on;",
        'if ($canaryd_mirror_3 = "") {\n            access_log off;\n            return 204;',
        "proxy_pass http://canaryd_app_3_mirror$request_uri;",
        "proxy_http_version 1.1;",
        "proxy_read_timeout 5s;",
    ):
        assert line in inner, (line, inner)


def test_nginx_copies_everything_at_100_percent() -> None:
    text = render_nginx(table(100), nginx_spec())
    assert "split_clients" not in text and "return 204" not in text
    assert "proxy_pass http://canaryd_app_3_mirror$request_uri;" in text


@pytest.mark.parametrize(
    ("t", "s", "words"),
    [
        (table(0), nginx_spec(), "mirror percent"),  # 0 is "no mirror": the canary would join the split
        (table(101), nginx_spec(), "mirror percent"),
        (table(20, cohort="stable"), nginx_spec(), "to canaries only"),
        (table(20), spec("nginx"), "needs listen and access_log"),
    ],
)
def test_nginx_refuses_an_impossible_mirror(t: RouteTable, s: ProxySpec, words: str) -> None:
    if t.backends[0].mirror == 0:
        # Not a mirror at all: a canary in the split, rendered as such.
        assert "10.0.0.1:8000 weight=1" in render_nginx(t, s)
        return
    with pytest.raises(ValueError, match=words):
        render_nginx(t, s)


def test_haproxy_refuses_to_render_a_mirror() -> None:
    with pytest.raises(ValueError, match="cannot mirror requests on HAProxy"):
        render_haproxy(table(), spec("haproxy"))


def test_traefik_routes_through_a_mirroring_service() -> None:
    """The application's router points to a mirroring service over the weighted one (stable servers only),
    copying the share to the canaries' own weighted service; the canary keeps its server service, whose
    metrics count the copies."""
    config = render_traefik(table(20), spec("traefik", force_header="X-Canary"))
    services, routers = config["http"]["services"], config["http"]["routers"]
    assert routers["canaryd-app-3"]["service"] == "canaryd-app-3-mirror"
    assert services["canaryd-app-3-mirror"] == {
        "mirroring": {
            "service": "canaryd-app-3",
            "maxBodySize": 1024 * 1024,
            "mirrors": [{"name": "canaryd-app-3-copies", "percent": 20}],
        }
    }
    assert services["canaryd-app-3-copies"] == {
        "weighted": {"services": [{"name": "canaryd-app-3-server-1", "weight": 1}]}
    }
    weighted = [c["name"] for c in services["canaryd-app-3"]["weighted"]["services"]]
    assert weighted == ["canaryd-app-3-server-2", "canaryd-app-3-server-3"]
    assert "canaryd-app-3-server-1" in services
    # Forcing the canary finds no live canary: only `never` (stable) gets a router.
    assert set(routers) == {"canaryd-app-3", "canaryd-app-3-force-stable"}
    assert expected_weights(table(20)) == {"canaryd-app-3-server-2": 1, "canaryd-app-3-server-3": 1}
    with pytest.raises(ValueError, match="a mirror needs router_rule"):
        render_traefik(table(20), spec("traefik", router_rule=None))


def line(**fields: object) -> str:
    base = {"time": "1.0", "status": "200", "request_time": "0.300", "upstream_status": "200"}
    return json.dumps({**base, **fields})


def test_client_lines_read_by_their_upstreams_time() -> None:
    """A client's line (mirrored) is written once its copy was answered too: its latency is its upstream's
    (summed over retries); the copy's own line is the canary's, with the canary's time and status."""
    cohorts = {"10.0.0.1:8000": "canary", "10.0.0.2:8000": "stable", "10.0.0.3:8000": "stable"}
    lines = [
        line(upstream_addr="10.0.0.2:8000", upstream_response_time="0.004", mirrored="1"),
        line(
            upstream_addr="10.0.0.2:8000, 10.0.0.3:8000", upstream_response_time="0.001, 0.005", mirrored="1"
        ),
        line(
            upstream_addr="", upstream_response_time="", status="502", mirrored="1"
        ),  # no upstream: unrouted
        line(upstream_addr="10.0.0.1:8000", upstream_response_time="0.300", status="500"),  # the copy
        line(upstream_addr="10.0.0.2:8000", upstream_response_time="-", mirrored="1"),  # falls back
    ]
    parsed = parse_access_log_lines(lines, cohorts.get)  # type: ignore[arg-type]
    stable, canary = parsed.cohorts["stable"], parsed.cohorts["canary"]
    assert stable.requests == 3 and canary.requests == 1 and canary.errors == 1 and parsed.unrouted == 1
    assert stable.quantile_ms(0.5) is not None and stable.quantile_ms(0.5) < 10  # type: ignore[operator]
    assert stable.quantile_ms(1.0) > 250  # type: ignore[operator]
    assert canary.quantile_ms(0.5) > 250  # type: ignore[operator]
