"""422s of strategy `ab` (and of the strategies not built yet): every problem in one answer, whether the
body fails its schema or only the application and the merged settings can tell."""

from __future__ import annotations

from typing import Any

from tests.fixtures.stack import Stack

from .test_validation import locs, messages

GOOD_AB = {"match": [{"header": "X-Beta", "equals": "1"}, {"cookie": "plan", "regex": "^pro"}]}


async def test_schema_problems_and_strategy_problems_in_one_answer(embedded_stack: Stack) -> None:
    """A body that fails its schema (bad names, a regex RE2 would read differently, one that matches
    nothing at all, a rule with two names) still lists the strategy's problems beside them."""
    s = embedded_stack
    await s.register("v1")
    ab = {
        "match": [
            {"header": "X Beta", "equals": "1"},
            {"cookie": "my-plan", "equals": "pro plus"},
            {"header": "User-Agent", "regex": "(?<=Mobile)Safari"},
            {"header": "User-Agent", "regex": "a++"},
            {"header": "X-A", "regex": "(unclosed"},
            {"header": "X-A", "regex": ".*"},
            {"header": "X-A", "cookie": "b", "equals": "1", "regex": "x"},
        ]
    }
    r = await s.deploy("v2", {"ab": ab, "stage_duration": 0}, strategy="canary")
    assert r.status_code == 422, r.text
    text = "\n".join(messages(r))
    for words in (
        "header 'X Beta' must be letters, digits and '-'",
        "cookie 'my-plan' must be letters, digits and '_'",
        "equals 'pro plus' must be 1 to 128 letters",
        "uses (?<=... (only (?: ) groups and the (?i) flag), which PCRE (nginx, HAProxy) and RE2 (Traefik)",
        "uses a possessive quantifier",
        "does not compile",
        "matches an empty value",
        "names exactly one of header or cookie; a match rule gives exactly one of equals or regex",
        "stage_duration must be at least 1 seconds",
        "ab settings apply to strategy ab only, not canary",
    ):
        assert words in text, (words, text)
    assert ["body", "config", "ab"] in locs(r)
    assert (await s.api.get("/deployments")).json() == []


async def test_ab_settings_checked_against_the_strategy(embedded_stack: Stack) -> None:
    """Strategy ab refuses canary percentages, approvals of later stages and check stages, all at once;
    without an ab block it says what to send."""
    s = embedded_stack
    await s.register("v1")
    checks: list[dict[str, Any]] = [
        {"name": "smoke", "point": "pre_stage", "url": "http://127.0.0.1:1/", "stages": [10]}
    ]
    config = {"ab": GOOD_AB, "stages": [10, 100], "approve_before": [100], "checks": checks}
    r = await s.deploy("v2", config, strategy="ab")
    assert r.status_code == 422, r.text
    text = "\n".join(messages(r))
    assert "stages are the canary's percentages; an A/B test routes by its match rules" in text
    assert "approve_before names later stages; an A/B test has one stage" in text
    assert "check stages name canary percentages" in text
    assert {("body", "config", "stages"), ("body", "config", "approve_before")} <= {
        tuple(loc) for loc in locs(r)
    }
    r = await s.deploy("v2", {"stage_duration": 5}, strategy="ab")
    assert r.status_code == 422 and "strategy ab needs config.ab" in "\n".join(messages(r)), r.text


async def test_an_unknown_strategy_is_refused(embedded_stack: Stack) -> None:
    """A strategy canaryd does not have is a 422 at the strategy, naming the ones it has."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy("v2", {}, strategy="linear")
    assert r.status_code == 422 and locs(r)[0] == ["body", "strategy"], r.text
    assert all(name in r.text for name in ("canary", "ab", "rolling", "mirror", "blue_green")), r.text


async def test_a_valid_ab_deployment_starts_with_one_stage(embedded_stack: Stack) -> None:
    """A valid A/B request is accepted: one stage, the rules in its settings, no random share targeted."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy("v2", {"ab": GOOD_AB, "stage_duration": 3600}, strategy="ab")
    assert r.status_code == 201, r.text
    st = r.json()
    assert st["strategy"] == "ab" and st["total_stages"] == 1
    assert st["config"]["stages"] == [100.0] and st["config"]["ab"] == {
        "match": [
            {"header": "X-Beta", "cookie": None, "equals": "1", "regex": None},
            {"header": None, "cookie": "plan", "equals": None, "regex": "^pro"},
        ]
    }
    assert st["target_traffic_percentage"] == 0.0
    assert (await s.api.post(f"/deployments/{st['id']}/rollback", json={})).status_code == 202


async def test_openapi_shows_the_strategies_and_ab_settings(embedded_stack: Stack) -> None:
    """/openapi.json names every strategy and documents the ab block and its rules."""
    s = embedded_stack
    doc = (await s.api.get(f"{s.base}/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    strategy = schemas["DeploymentCreate"]["properties"]["strategy"]
    assert strategy["enum"] == ["canary", "ab", "blue_green", "mirror", "rolling"]
    assert "config.ab.match" in strategy["description"]
    assert set(schemas["AbRule"]["properties"]) == {"header", "cookie", "equals", "regex"}
    assert "Strategy ab only" in str(schemas["CanaryConfigOverrides"]["properties"]["ab"])
