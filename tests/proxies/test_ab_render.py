"""A/B rules in each proxy's configuration (pure renderers): what each proxy is given, how values are
quoted, and that a value that could carry syntax never reaches a file even if it got past the API."""

from __future__ import annotations

import pytest

from canaryd.domain.config import ProxySpec
from canaryd.domain.types import Backend, MatchRule
from canaryd.proxies.base import RouteTable
from canaryd.proxies.haproxy import all_expected_weights, frontend_fingerprint, render_haproxy
from canaryd.proxies.nginx import render_nginx
from canaryd.proxies.traefik import expected_weights, render_traefik

RULES = (
    MatchRule("header", "X-Beta", "equals", "1.0+rc"),
    MatchRule("cookie", "plan", "equals", "pro"),
    MatchRule("header", "User-Agent", "regex", r"Mobile\.\d{1,3}"),
)


def table(rules: tuple[MatchRule, ...] = RULES) -> RouteTable:
    return RouteTable(
        3,
        "shop",
        (
            Backend(1, "10.0.0.1", 8000, 1, "canary", rules),
            Backend(2, "10.0.0.2", 8000, 1, "stable"),
            Backend(3, "10.0.0.3", 8000, 1, "stable"),
        ),
        7,
    )


def spec(kind: str, **extra: object) -> ProxySpec:
    fields: dict[str, object] = {"kind": kind, "server_id": 1, "reload_command": "true"}
    if kind == "nginx":
        fields.update(config_path="/etc/nginx/conf.d/shop.conf", listen="127.0.0.1:8080")
    elif kind == "haproxy":
        fields.update(
            config_path="/etc/haproxy/conf.d/shop.cfg", listen="127.0.0.1:8080", runtime_socket="/run/h.sock"
        )
    else:
        fields.update(
            config_path="/etc/traefik/dynamic/shop.yml",
            api_url="http://127.0.0.1:8081",
            metrics_url="http://127.0.0.1:8082/metrics",
            router_rule="PathPrefix(`/`)",
        )
    fields.update(extra)
    return ProxySpec.model_validate(fields)


def test_nginx_maps_per_rule_and_canary_only_in_its_upstream() -> None:
    """One map per rule (exact values regex-escaped and anchored, backslashes doubled for nginx's quoted
    strings); the weighted upstream holds stable servers only; the rules beat the sticky cookie."""
    text = render_nginx(table(), spec("nginx", sticky=True))
    assert 'map $http_x_beta $canaryd_ab_3_0 {\n    default "";\n    "~^1\\\\.0\\\\+rc$" c;\n}' in text
    assert "map $cookie_plan $canaryd_ab_3_1 {" in text and '"~^pro$" c;' in text
    assert 'map $http_user_agent $canaryd_ab_3_2 {\n    default "";\n    "~Mobile\\\\.\\\\d{1,3}" c;' in text
    weighted = text.split("upstream canaryd_app_3 {")[1].split("}")[0]
    assert "10.0.0.1" not in weighted and "10.0.0.2:8000 weight=1" in weighted
    canary = text.split("upstream canaryd_app_3_canary {")[1].split("}")[0]
    assert canary.strip() == "server 10.0.0.1:8000 max_fails=0;  # canary server 1, A/B"
    assert 'map "$canaryd_ab_3_0$canaryd_ab_3_1$canaryd_ab_3_2$canaryd_kept_3" $canaryd_upstream_3 {' in text
    assert '"~^c" canaryd_app_3_canary;' in text
    assert "proxy_pass http://$canaryd_upstream_3;" in text


def test_haproxy_acls_in_the_frontend_and_canary_at_weight_0_in_the_split() -> None:
    """The frontend sends a matching request to the canary backend while it has a server (fhdr, cook, -m
    str/reg, values in single quotes); the canary is at weight 0 in the weighted backend."""
    text = render_haproxy(table(), spec("haproxy"))
    assert (
        "    use_backend canaryd_app_3_canary if { req.fhdr(X-Beta) -m str '1.0+rc' } "
        "{ nbsrv(canaryd_app_3_canary) gt 0 }"
    ) in text
    assert "{ req.cook(plan) -m str 'pro' }" in text
    assert "{ req.fhdr(User-Agent) -m reg 'Mobile\\.\\d{1,3}' }" in text
    assert text.index("use_backend canaryd_app_3_canary") < text.index("default_backend canaryd_app_3")
    weights = all_expected_weights(table(), [1, 2, 3], spec("haproxy"))
    assert weights["canaryd_app_3"] == {"s1": 0, "s2": 1, "s3": 1}
    assert weights["canaryd_app_3_canary"] == {"s1": 1, "s2": 0, "s3": 0}
    assert frontend_fingerprint(3, spec("haproxy"), RULES) != frontend_fingerprint(3, spec("haproxy"))
    assert f'string "{frontend_fingerprint(3, spec("haproxy"), RULES)}"' in text


def test_traefik_routers_per_rule_below_the_forced_header() -> None:
    """One router per rule to the canary service; a cookie by a regex over the Cookie header; the canary is
    not a child of the weighted service."""
    config = render_traefik(table(), spec("traefik", force_header="X-Canary"))
    routers = config["http"]["routers"]
    assert routers["canaryd-app-3-ab-0"] == {
        "rule": "(PathPrefix(`/`)) && Header(`X-Beta`, `1.0+rc`)",
        "service": "canaryd-app-3-canary",
        "priority": 90000,
    }
    assert routers["canaryd-app-3-ab-1"]["rule"].endswith(
        "HeaderRegexp(`Cookie`, `(?:^|;\\s*)plan=pro(?:;|$)`)"
    )
    assert routers["canaryd-app-3-ab-2"]["rule"].endswith("HeaderRegexp(`User-Agent`, `Mobile\\.\\d{1,3}`)")
    assert routers["canaryd-app-3-force-canary"]["priority"] > routers["canaryd-app-3-ab-0"]["priority"]
    assert expected_weights(table()) == {"canaryd-app-3-server-2": 1, "canaryd-app-3-server-3": 1}
    children = config["http"]["services"]["canaryd-app-3"]["weighted"]["services"]
    assert [c["name"] for c in children] == ["canaryd-app-3-server-2", "canaryd-app-3-server-3"]


@pytest.mark.parametrize(
    "rule",
    [
        MatchRule("header", "X-Beta", "equals", 'a"b'),
        MatchRule("header", "X-Beta", "equals", "a'b"),
        MatchRule("header", "X-Beta", "equals", "a`b"),
        MatchRule("header", "X-Beta", "regex", "a'b"),
        MatchRule("header", "X-Beta", "regex", "a`b"),
        MatchRule("header", "X-Beta", "regex", 'a"; }'),
        MatchRule("header", "X Beta", "equals", "1"),
        MatchRule("cookie", "plan;", "equals", "1"),
        MatchRule("header", "X-Beta", "regex", ".*"),
    ],
)
def test_values_that_could_carry_syntax_never_reach_a_file(rule: MatchRule) -> None:
    """Each renderer checks the rules again (defence in depth): ValueError, never a file."""
    for render, kind in ((render_nginx, "nginx"), (render_haproxy, "haproxy"), (render_traefik, "traefik")):
        with pytest.raises(ValueError):
            render(table((rule,)), spec(kind))


def test_rules_need_canaryd_s_entry_point_and_stable_servers() -> None:
    """Without listen (nginx, HAProxy) or router_rule (Traefik) the rules could not route; a table whose
    servers all carry rules would leave the split empty."""
    with pytest.raises(ValueError, match="listen"):
        render_haproxy(table(), spec("haproxy", listen=None))
    with pytest.raises(ValueError, match="router_rule"):
        render_traefik(table(), spec("traefik", router_rule=None))
    only = RouteTable(3, "shop", (Backend(1, "10.0.0.1", 8000, 1, "canary", RULES),), 7)
    with pytest.raises(ValueError):
        render_nginx(only, spec("nginx"))
    with pytest.raises(ValueError):
        render_traefik(only, spec("traefik"))
