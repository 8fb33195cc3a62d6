"""422s of strategy `blue_green`: every problem of the request and of the application in one answer, and the
application's green_port checked where it is set."""

from __future__ import annotations

from typing import Any

from tests.fixtures.stack import Stack

from .test_validation import locs, messages


async def test_every_problem_in_one_answer(embedded_stack: Stack) -> None:
    """An application without green_port and stop_command, and settings that name stages, a canary share,
    approvals, check stages and an A/B block: all refused at once, nothing created."""
    s = embedded_stack
    await s.register("v1")
    checks: list[dict[str, Any]] = [
        {"name": "smoke", "point": "pre_stage", "url": "http://127.0.0.1:1/", "stages": [10]}
    ]
    config = {
        "stages": [10, 100],
        "canary_server_percentage": 20,
        "approve_before": [100],
        "checks": checks,
        "ab": {"match": [{"header": "X-Beta", "equals": "1"}]},
    }
    r = await s.deploy("v2", config, strategy="blue_green")
    assert r.status_code == 422, r.text
    text = "\n".join(messages(r))
    for words in (
        "strategy blue_green needs the application's green_port",
        "strategy blue_green needs the application's stop_command",
        "stages are the canary's percentages; blue_green tests green for one stage",
        "leave canary_server_percentage out",
        "approve_before names later stages; blue_green has one test stage",
        "check stages name canary percentages; blue_green has one test stage",
        "ab settings apply to strategy ab only, not blue_green",
    ):
        assert words in text, (words, text)
    assert {("application", "green_port"), ("application", "stop_command"), ("body", "config", "stages")} <= {
        tuple(loc) for loc in locs(r)
    }
    assert (await s.api.get("/deployments")).json() == []


async def test_settings_and_ports_are_checked(embedded_stack: Stack) -> None:
    """blue_green settings with another strategy, a test rule the proxy cannot read, a green_port equal to
    the port (on a change) and out of range: each refused with its reason."""
    s = embedded_stack
    app = await s.register("v1")
    r = await s.deploy("v2", {"blue_green": {"keep_old": 5}}, strategy="canary")
    assert r.status_code == 422 and ["body", "config", "blue_green"] in locs(r), r.text
    assert (
        "blue_green settings apply to strategy blue_green or mirror with then: blue_green, not canary"
        in "\n".join(messages(r))
    )
    r = await s.api.patch(f"/applications/{app['id']}", json={"green_port": app["port"]})
    assert r.status_code == 422 and messages(r) == ["green_port must differ from port"], r.text
    r = await s.api.patch(f"/applications/{app['id']}", json={"green_port": 70000})
    assert r.status_code == 422 and ["body", "green_port"] in locs(r), r.text
    bad = {"blue_green": {"keep_old": -1, "test_match": [{"header": "X Canary", "equals": "always"}]}}
    r = await s.deploy("v2", bad, strategy="blue_green")
    assert r.status_code == 422, r.text
    text = "\n".join(messages(r))
    assert "header 'X Canary' must be letters, digits and '-'" in text and "keep_old" in str(locs(r)), text


async def test_a_valid_blue_green_deployment_starts(embedded_stack: Stack) -> None:
    """With a green_port and a stop command, a blue_green request is accepted: one test stage, the default
    test rule (X-Canary: always) and keep_old stored in its settings; the application shows its green_port."""
    s = embedded_stack
    app = await s.register("v1")
    green = app["port"] + 1 if app["port"] < 65535 else app["port"] - 1
    r = await s.api.patch(
        f"/applications/{app['id']}", json={"green_port": green, "stop_command": "true {port}"}
    )
    assert r.status_code == 200 and r.json()["green_port"] == green, r.text
    r = await s.deploy("v2", {"stage_duration": 3600}, strategy="blue_green")
    assert r.status_code == 201, r.text
    st = r.json()
    assert st["strategy"] == "blue_green" and st["total_stages"] == 1 and st["switched_at"] is None
    assert st["config"]["stages"] == [100.0]
    assert st["config"]["blue_green"] == {
        "test_match": [{"header": "X-Canary", "cookie": None, "equals": "always", "regex": None}],
        "keep_old": 300,
    }
    assert (await s.api.post(f"/deployments/{st['id']}/rollback", json={})).status_code == 202
    await s.wait(st["id"], timeout=30)
