"""422s of strategy `mirror`: every problem in one answer (its settings, the stages it cannot have, the
proxy that cannot mirror), and what a valid mirror test starts with."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.fixtures.haproxy import start_haproxy
from tests.fixtures.stack import Stack, make_stack
from tests.fixtures.traefik import start_traefik

from .test_validation import locs, messages


async def test_mirror_settings_listed_with_every_other_problem(embedded_stack: Stack) -> None:
    """Bad mirror settings, a mirror block with another strategy, and a body's other problems: one 422."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy(
        "v2", {"mirror": {"percent": 0, "then": "later", "extra": 1}, "stage_duration": 0}, "mirror"
    )
    assert r.status_code == 422, r.text
    text = "\n".join(messages(r))
    for words in (
        "greater than or equal to 1",
        "'canary', 'stop' or 'blue_green'",
        "Extra inputs are not permitted",
        "stage_duration must be at least 1 seconds",
    ):
        assert words in text, (words, text)
    r = await s.deploy("v2", {"mirror": {"percent": 20}}, strategy="canary")
    assert r.status_code == 422 and messages(r) == [
        "mirror settings apply to strategy mirror only, not canary"
    ]
    r = await s.deploy("v2", {"mirror": {"percent": 101}, "ab": {"match": []}}, strategy="ab")
    assert r.status_code == 422, r.text
    assert ["body", "config", "mirror", "percent"] in locs(r) and ["body", "config", "mirror"] in locs(r)
    r = await s.deploy("v2", {"mirror": "20 %"}, strategy="mirror")
    assert r.status_code == 422 and locs(r) == [["body", "config", "mirror"]], r.text
    r = await s.deploy("v2", {"stage_duration": 5}, strategy="mirror")
    assert r.status_code == 422 and "strategy mirror needs config.mirror" in "\n".join(messages(r)), r.text
    assert (await s.api.get("/deployments")).json() == []


async def test_mirror_then_stop_refuses_canary_stages(embedded_stack: Stack) -> None:
    """With then: stop there are no canary stages: stages, approve_before and check stages are refused
    together."""
    s = embedded_stack
    await s.register("v1")
    checks: list[dict[str, Any]] = [
        {"name": "smoke", "point": "pre_stage", "url": "http://127.0.0.1:1/", "stages": [10]}
    ]
    config = {
        "mirror": {"percent": 10, "then": "stop"},
        "stages": [10, 100],
        "approve_before": [100],
        "checks": checks,
    }
    r = await s.deploy("v2", config, strategy="mirror")
    assert r.status_code == 422, r.text
    assert {("body", "config", "stages"), ("body", "config", "approve_before")} <= {tuple(x) for x in locs(r)}
    assert ["body", "config", "checks", 0, "stages"] in locs(r)
    assert all("then: stop has no canary stages" in m for m in messages(r)), messages(r)


async def test_valid_mirror_deployments_start(embedded_stack: Stack) -> None:
    """then: canary runs the mirror phase as stage 1 before the canary's stages; then: stop has one stage;
    neither targets a share of live traffic during the mirror phase."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy(
        "v2", {"mirror": {"percent": 20}, "stages": [10, 50, 100], "stage_duration": 3600}, "mirror"
    )
    assert r.status_code == 201, r.text
    st = r.json()
    assert st["strategy"] == "mirror" and st["total_stages"] == 4
    assert st["config"]["stages"] == [5.0, 10.0, 50.0, 100.0]
    assert st["config"]["mirror"] == {"percent": 20, "then": "canary"}
    assert st["target_traffic_percentage"] == 0.0
    assert (await s.api.post(f"/deployments/{st['id']}/rollback", json={})).status_code == 202
    await s.wait(st["id"], timeout=30)
    r = await s.deploy("v3", {"mirror": {"percent": 100, "then": "stop"}, "stage_duration": 3600}, "mirror")
    assert r.status_code == 201, r.text
    assert r.json()["config"]["stages"] == [100.0] and r.json()["total_stages"] == 1
    assert (await s.api.post(f"/deployments/{r.json()['id']}/rollback", json={})).status_code == 202
    await s.wait(r.json()["id"], timeout=30)


async def test_mirror_then_blue_green_lists_every_problem_then_starts(embedded_stack: Stack) -> None:
    """then: blue_green needs what blue_green needs (green_port, stop_command, a proxy that routes its test
    rules) and what a mirror needs (nginx's listen and access_log), refuses named stages, a canary share,
    approvals and check stages: all in one 422. Once the application has them it starts: a mirror phase and
    a test, no share of live traffic targeted in the mirror phase, blue_green's defaults stored."""
    s = embedded_stack
    app = await s.register("v1", proxy_overrides={"listen": None})
    checks: list[dict[str, Any]] = [
        {"name": "smoke", "point": "pre_stage", "url": "http://127.0.0.1:1/", "stages": [100]}
    ]
    config = {
        "mirror": {"percent": 20, "then": "blue_green"},
        "stages": [10, 100],
        "canary_server_percentage": 20,
        "approve_before": [100],
        "checks": checks,
    }
    r = await s.deploy("v2", config, strategy="mirror")
    assert r.status_code == 422, r.text
    text = "\n".join(messages(r))
    for words in (
        "a mirror test with then: blue_green needs the application's green_port",
        "a mirror test with then: blue_green needs the application's stop_command",
        "a mirror test with then: blue_green tests green on copies, then on test requests",
        "a mirror test with then: blue_green starts green beside blue on every server",
        "approve_before names later stages; a mirror test with then: blue_green has a mirror phase",
        "check stages name canary percentages; a mirror test with then: blue_green",
        "a mirror test on nginx needs the proxy's listen and access_log",
    ):
        assert words in text, (words, text)
    assert ["body", "config", "checks", 0, "stages"] in locs(r)
    assert (await s.api.get("/deployments")).json() == []
    green = app["port"] + 1 if app["port"] < 65535 else app["port"] - 1
    proxy = {**app["proxy"], "listen": s.nginx.spec(server_id=app["proxy"]["server_id"]).listen}
    fields = {"green_port": green, "stop_command": "true {port}", "proxy": proxy}
    r = await s.api.patch(f"/applications/{app['id']}", json=fields)
    assert r.status_code == 200, r.text
    config = {"mirror": {"percent": 20, "then": "blue_green"}, "stage_duration": 3600}
    r = await s.deploy("v2", config, strategy="mirror")
    assert r.status_code == 201, r.text
    st = r.json()
    assert st["config"]["stages"] == [50.0, 100.0] and st["total_stages"] == 2
    assert st["target_traffic_percentage"] == 0.0
    assert st["config"]["blue_green"]["keep_old"] == 300
    assert (await s.api.post(f"/deployments/{st['id']}/rollback", json={})).status_code == 202
    await s.wait(st["id"], timeout=30)


async def test_mirror_refused_on_haproxy(tmp_path: Path, sqlite_url: str) -> None:
    """HAProxy cannot copy requests: a mirror deployment of an application behind it is a 422 that says
    why, listed with the request's other problems."""
    haproxy = await asyncio.to_thread(start_haproxy)
    try:
        async with make_stack(tmp_path, sqlite_url, servers=2) as s:
            await s.register("v1", proxy_overrides=haproxy.spec().model_dump(exclude={"server_id"}))
            r = await s.deploy("v2", {"mirror": {"percent": 20}, "stage_duration": 60}, strategy="mirror")
            assert r.status_code == 422, r.text
            assert locs(r) == [["body", "strategy"]], r.text
            assert messages(r) == [
                "strategy mirror is not available on haproxy: it cannot copy requests by itself (it would "
                "need an SPOE mirroring agent beside it); it runs on nginx and traefik (see docs/strategies.md)"
            ]
            r = await s.deploy("v1", {"mirror": {"percent": 20}}, strategy="mirror")
            assert r.status_code == 422 and len(messages(r)) == 2, r.text
            # then: blue_green too, with blue_green's own needs in the same answer.
            r = await s.deploy("v2", {"mirror": {"percent": 20, "then": "blue_green"}}, strategy="mirror")
            assert r.status_code == 422, r.text
            assert ["body", "strategy"] in locs(r) and ["application", "green_port"] in locs(r), r.text
    finally:
        await asyncio.to_thread(haproxy.cleanup)


async def test_mirror_on_nginx_needs_listen_and_access_log(embedded_stack: Stack) -> None:
    """Without a server block and an access log canaryd cannot make copies nor read their answers."""
    s = embedded_stack
    await s.register("v1", proxy_overrides={"listen": None})
    r = await s.deploy("v2", {"mirror": {"percent": 20}}, strategy="mirror")
    assert r.status_code == 422, r.text
    assert "a mirror test on nginx needs the proxy's listen and access_log" in messages(r)[0]


async def test_mirror_on_traefik_needs_router_rule(tmp_path: Path, sqlite_url: str) -> None:
    """On Traefik the router canaryd owns must point to the mirroring service: without router_rule, 422."""
    traefik = await asyncio.to_thread(start_traefik)
    try:
        async with make_stack(tmp_path, sqlite_url, servers=2) as s:
            overrides = traefik.spec().model_dump()
            overrides.update(listen=None, access_log=None, test_command=None, router_rule=None)
            await s.register("v1", proxy_overrides=overrides)
            r = await s.deploy("v2", {"mirror": {"percent": 20}, "stage_duration": 60}, strategy="mirror")
            assert r.status_code == 422, r.text
            assert "a mirror test on Traefik needs the proxy's router_rule" in messages(r)[0], r.text
    finally:
        await asyncio.to_thread(traefik.cleanup)
