"""422s of the HTTP API: every problem listed at once in the spec's words; hostile values never get anywhere."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fixtures.stack import APPCTL, Stack


def messages(response: httpx.Response) -> list[str]:
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    return [str(d["msg"]) for d in detail]


def locs(response: httpx.Response) -> list[list[Any]]:
    return [list(d["loc"]) for d in response.json()["detail"]]


def app_body(stack: Stack, **overrides: Any) -> dict[str, Any]:
    """A valid POST /applications body for a second application on the same proxy file as `stack.app`."""
    body = {
        "name": "shop2",
        "port": stack.app_port,
        "health_path": "/health",
        "server_ids": stack.server_ids[:2],
        "current_version": "v1",
        "deploy_command": f"CONTRACT_STATE={stack.state_dir} {sys.executable} {APPCTL} start --host {{host}} "
        "--port {port} --version {version}",
        "stop_command": None,
        "proxy": copy.deepcopy(stack.app["proxy"]),
    }
    body.update(overrides)
    return body


def proxy_with(stack: Stack, **fields: Any) -> dict[str, Any]:
    proxy: dict[str, Any] = copy.deepcopy(stack.app["proxy"])
    proxy.update(fields)
    return proxy


def describe(stack: Stack, change: dict[str, Any]) -> dict[str, Any]:
    """`change` with only the proxy fields that differ from the registered application's (short messages)."""
    if "proxy" not in change:
        return change
    base = stack.app["proxy"]
    return {"proxy": {k: str(v)[:100] for k, v in change["proxy"].items() if base.get(k) != v}}


async def test_deployment_config_lists_every_problem(spec_stack: Stack) -> None:
    """An invalid deployment request gets one 422 listing every problem in the spec's words; nothing starts."""
    s = spec_stack
    app = await s.register("v1")
    r = await s.api.post(
        f"/applications/{app['id']}/deployments",
        json={
            "version": "v2; rm -rf /",
            "strategy": "blue-green",
            "config": {
                "stages": [0, 150],
                "stage_duration": 5,
                "error_rate_threshold": -1,
                "canary_server_percentage": 0,
                "health_check_interval": 0,
                "colour": "red",
            },
        },
    )
    assert r.status_code == 422, r.text
    got = messages(r)
    expected = [
        "stage percentages must be between 0 and 100",
        "stage_duration must be at least 60 seconds",
        "error_rate_threshold must be positive",
        "canary_server_percentage must be greater than 0 and at most 50",
        "health_check_interval must be at least 1",
    ]
    for text in expected:
        assert any(text in m for m in got), (text, got)
    where = locs(r)
    assert ["body", "config", "colour"] in where, where  # unknown field
    assert ["body", "version"] in where, where
    assert ["body", "strategy"] in where, where
    assert all(not m.startswith("Value error") for m in got), got
    # The floor is the spec's 60 s: 59 is refused, 60 accepted.
    r = await s.deploy("v2", {"stage_duration": 59, "health_check_interval": 1})
    assert r.status_code == 422 and messages(r) == ["stage_duration must be at least 60 seconds"], r.text
    r = await s.deploy("v2", {"stages": [50, 25], "stage_duration": 60})
    assert r.status_code == 422 and "stage percentages must increase" in messages(r)[0], r.text
    r = await s.deploy("v2", {"stage_duration": 60, "health_check_interval": 61})
    assert r.status_code == 422, r.text
    assert messages(r) == ["health_check_interval must not be longer than stage_duration"], r.text
    # Every broken rule between fields at once, not the first one only.
    r = await s.deploy(
        "v2", {"stage_duration": 60, "health_check_interval": 61, "approve_before": [10], "stages": [10, 100]}
    )
    assert r.status_code == 422, r.text
    assert "health_check_interval must not be longer than stage_duration" in " ".join(messages(r)), r.text
    assert "approve_before names 10" in " ".join(messages(r)), r.text
    listed = await s.api.get(f"/applications/{app['id']}/deployments")
    assert listed.status_code == 200 and listed.json() == []
    # The same version as the current one is a 422 too.
    r = await s.deploy("v1", {"stage_duration": 60})
    assert r.status_code == 422 and "already the current version" in messages(r)[0], r.text
    r = await s.deploy("v2", {"stage_duration": 60, "health_check_interval": 1})
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["config"]["stage_duration"] == 60
    r = await s.api.post(f"/deployments/{dep['id']}/rollback")
    assert r.status_code == 202, r.text
    await s.wait(dep["id"], timeout=60)


async def test_hostile_servers_are_refused(embedded_stack: Stack) -> None:
    """Server names, hosts, users and labels that could carry shell or nginx syntax get 422; nothing is stored."""
    s = embedded_stack
    await s.register("v1")
    conf = Path(s.nginx.config_path).read_bytes()
    before = (await s.api.get("/servers")).json()
    base = {"name": "edge", "host": "127.0.0.9", "transport": "ssh", "ssh_port": 22, "ssh_user": "deploy"}
    hostile = ["a;b", "a{b", "a}b", "a\nb", "a#b", "a'b", 'a"b', "$(id)", "`id`", "a b", "x" * 300]
    cases: list[dict[str, Any]] = [{"name": ""}, {"host": ""}, {"ssh_user": ""}, {"labels": {"": "x"}}]
    for value in hostile:
        cases += [{"name": value}, {"host": value}, {"ssh_user": value}]
        cases += [{"host": f"127.0.0.1{value}"}, {"host": f"{value}.example.com"}]
        cases += [{"labels": {value: "x"}}]
    cases += [
        {"host": "127.0.0.1\n"},
        {"host": "example.com\n"},
        {"name": "edge\n"},
        {"transport": "telnet"},
        {"ssh_port": 0},
        {"ssh_port": 65536},
        {"ssh_user": "Root"},
        # Label values are free text, never rendered into a proxy file or a command, but one line and bounded.
        {"labels": {"k": "x" * 300}},
        {"labels": {"k": "a\nb"}},
        {"labels": {"k": "a\x00b"}},
        {"labels": {f"k{i}": "v" for i in range(51)}},
        {"unknown": 1},
    ]
    wrong = []
    for change in cases:
        r = await s.api.post("/servers", json={**base, **change})
        if r.status_code != 422:
            wrong.append((change, r.status_code, r.text[:200]))
        else:
            assert isinstance(r.json()["detail"], list)
    assert not wrong, "\n".join(map(repr, wrong))
    assert (await s.api.get("/servers")).json() == before
    assert Path(s.nginx.config_path).read_bytes() == conf


async def test_hostile_applications_are_refused(embedded_stack: Stack) -> None:
    """Application values that could carry shell or nginx syntax get 422; no row, and nginx's file unchanged."""
    s = embedded_stack
    await s.register("v1")
    conf = Path(s.nginx.config_path).read_bytes()
    before = (await s.api.get("/applications")).json()
    hostile = ["a;b", "a{b", "a}b", "a\nb", "a#b", "a'b", 'a"b', "$(id)", "`id`", "a b", "x" * 300]
    cases: list[dict[str, Any]] = []
    for value in hostile:
        cases += [
            {"name": value},
            {"current_version": value},
            {"current_version": f"v1{value}"},
            {"health_path": f"/health{value}"},
            {"proxy": proxy_with(s, config_path=f"{s.nginx.config_path}{value}")},
            {"proxy": proxy_with(s, access_log=f"{s.nginx.access_log}{value}")},
            {"proxy": proxy_with(s, listen=f"{s.nginx.listen}{value}")},
        ]
    cases += [
        # Command templates: placeholders inside quotes or after a backslash, unknown ones, several lines.
        {"deploy_command": 'deploy --version "{version}"'},
        {"deploy_command": "deploy --version '{version}'"},
        {"deploy_command": "deploy --host \\{host}"},
        {"deploy_command": "deploy {hostname}"},
        {"deploy_command": "deploy {version}\nrm -rf /"},
        {"deploy_command": "   "},
        {"deploy_command": "x" * 2001},
        {"stop_command": 'stop "$(echo {app})"'},
        {"proxy": proxy_with(s, reload_command="nginx -s reload\nrm -rf /")},
        {"proxy": proxy_with(s, test_command="nginx -t '{app}'")},
        {"proxy": proxy_with(s, config_path="relative/app.conf")},
        {"proxy": proxy_with(s, listen="80 default_server")},
        {"proxy": proxy_with(s, listen="127.0.0.1:99999")},
        {"proxy": proxy_with(s, kind="haproxy")},
        {"proxy": proxy_with(s, kind="apache")},
        {"proxy": proxy_with(s, server_id=99999)},
        {"proxy": proxy_with(s, max_weight=0)},
        {"proxy": proxy_with(s, include="/etc/passwd")},
        {"health_path": "health"},
        {"health_path": "/" + "h" * 300},
        {"port": 0},
        {"port": 65536},
        {"server_ids": []},
        {"server_ids": [s.server_ids[0], s.server_ids[0]]},
        {"server_ids": [99999]},
        {"name": "shop"},  # taken: 409, not 422
    ]
    wrong: list[tuple[dict[str, Any], int | str, str]] = []
    current = before
    for i, change in enumerate(cases):
        r = await s.api.post("/applications", json=app_body(s, **{"name": f"shop-{i}", **change}))
        expected = 409 if change == {"name": "shop"} else 422
        now = (await s.api.get("/applications")).json()
        if r.status_code != expected:
            wrong.append((describe(s, change), r.status_code, r.text[:300]))
        elif now != current:
            wrong.append((describe(s, change), f"{r.status_code}, but stored anyway", r.text[:300]))
        current = now
    assert not wrong, "\n".join(map(repr, wrong))
    assert (await s.api.get("/applications")).json() == before
    assert Path(s.nginx.config_path).read_bytes() == conf


@pytest.fixture(params=["embedded_stack", "production_stack"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """The embedded (SQLite) and the production (PostgreSQL, Redis, workers) stack."""
    value: Stack = request.getfixturevalue(request.param)
    return value


async def test_refused_proxy_configuration_changes_nothing(stack: Stack) -> None:
    """When nginx's test fails the answer is 422 with nginx's message, no application, the old file in place."""
    s = stack
    await s.register("v1")
    conf = Path(s.nginx.config_path).read_bytes()
    listing = sorted(os.listdir(Path(s.nginx.config_path).parent))
    before = (await s.api.get("/applications")).json()
    missing_dir = f"{s.nginx.dir}/no-such-dir"
    bad_main = f"{s.nginx.dir}/no-such-nginx.conf"
    # Its own file (one application's file is never another's: that is refused before nginx is asked).
    other = f"{Path(s.nginx.config_path).parent}/other.conf"
    refusals = [
        # canaryd's own rendering, refused by the real `nginx -t`: the access log cannot be opened.
        (proxy_with(s, config_path=other, access_log=f"{missing_dir}/access.log"), "no-such-dir/access.log"),
        # A test command that fails.
        (
            proxy_with(s, config_path=other, test_command=f"{s.nginx.binary} -c {bad_main} -t"),
            "no-such-nginx.conf",
        ),
    ]
    for proxy, nginx_says in refusals:
        r = await s.api.post("/applications", json=app_body(s, proxy=proxy))
        assert r.status_code == 422, r.text
        text = " ".join(messages(r))
        assert "nginx" in text and nginx_says in text, text
        assert "No such file or directory" in text, text
        names = [a["name"] for a in (await s.api.get("/applications")).json()]
        assert names == [a["name"] for a in before], f"the refused application was stored anyway: {names}"
        assert Path(s.nginx.config_path).read_bytes() == conf
        assert sorted(os.listdir(Path(s.nginx.config_path).parent)) == listing  # no temp file left
    # nginx still serves the registered application from its old configuration.
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(s.proxy_url)
        assert r.status_code == 200 and r.headers.get("x-version") == "v1"
    # The name was not taken by the refused attempts.
    r = await s.api.post(
        "/applications",
        json=app_body(
            s, proxy=proxy_with(s, config_path=f"{Path(s.nginx.config_path).parent}/shop2.conf", listen=None)
        ),
    )
    assert r.status_code == 201, r.text
    assert Path(s.nginx.config_path).read_bytes() == conf
