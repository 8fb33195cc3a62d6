"""The default (sequential) judge end to end: real nginx, real sample apps, real traffic through the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.fixtures.prometheus import PrometheusInstance
from tests.fixtures.stack import LoadGenerator, Stack

ENDED = {"completed", "rolled_back", "failed", "paused"}
#: One check per time bucket, each worth up to ×10: a lasting regression is caught within a few checks
#: (the defaults, 60 s buckets worth ×2.5 each, need several minutes of a regression: docs/judge.md).
FAST_BUCKETS = {"bucket_seconds": 1, "bucket_max_evidence": 10}


def health_checks_before(events: list[dict[str, Any]], kind: str) -> int:
    """How many health checks the deployment ran before the first `kind` event."""
    count = 0
    for e in events:
        if e["kind"] == kind:
            return count
        count += e["kind"] == "health_check"
    raise AssertionError(f"no {kind} event in {[e['kind'] for e in events]}")


async def test_identical_canary_with_errors_at_low_traffic_is_not_rolled_back(embedded_stack: Stack) -> None:
    """Both versions answer 2 % errors at ~3 req/s: too little evidence to pass, none to fail: paused, not rolled back."""
    s = embedded_stack
    await s.register("v1-err2")
    load = LoadGenerator(s.proxy_url, rate=3).start()
    config = {
        "stages": [20, 100],
        "stage_duration": 5,
        "health_check_interval": 1,
        "inconclusive_timeout": 5,
        "inconclusive_action": "pause",
    }
    dep = (await s.deploy("v2-err2", config)).json()
    await s.wait(dep["id"], until=ENDED, timeout=60)
    await load.stop()
    status = await s.status(dep["id"])
    kinds = [e["kind"] for e in await s.events(dep["id"])]
    assert status["canary_status"] in ("paused", "completed"), status["reasons"]
    assert "rollback_started" not in kinds
    if status["canary_status"] == "paused":  # what it waited for is said in words
        assert any("requests needed" in r for r in status["reasons"]), status["reasons"]
    snapshot = status["metrics"]
    assert snapshot["judge"] == "sequential" and snapshot["verdict"]["outcome"] != "fail"


async def test_bad_canary_rolled_back_within_a_few_checks(embedded_stack: Stack) -> None:
    """A canary answering 30 % errors is rolled back on error_rate within a few health checks, with evidence."""
    s = embedded_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=30).start()
    dep = (
        await s.deploy(
            "v3-bad", {"stages": [20, 100], "stage_duration": 60, "health_check_interval": 1, **FAST_BUCKETS}
        )
    ).json()
    await s.wait(dep["id"], timeout=60)
    await load.stop()
    status = await s.status(dep["id"])
    assert status["canary_status"] == "rolled_back"
    assert status["reasons"][0].startswith("error_rate: canary errors"), status["reasons"]
    events = await s.events(dep["id"])
    assert health_checks_before(events, "rollback_started") <= 6
    started = next(e for e in events if e["kind"] == "rollback_started")
    figures = next(m for m in started["metrics"]["verdict"]["metrics"] if m["metric"] == "error_rate")[
        "figures"
    ]
    assert (
        figures["e_value"] >= figures["e_threshold"] and figures["canary_errors"] > figures["stable_errors"]
    )
    assert await s.fleet_versions() == ["v1"] * 5


async def test_slow_canary_rolled_back_on_latency(embedded_stack: Stack) -> None:
    """A canary 300 ms slower on every request is rolled back on the latency tail test."""
    s = embedded_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=30).start()
    dep = (
        await s.deploy(
            "v2-slow", {"stages": [20, 100], "stage_duration": 60, "health_check_interval": 1, **FAST_BUCKETS}
        )
    ).json()
    await s.wait(dep["id"], timeout=60)
    await load.stop()
    status = await s.status(dep["id"])
    assert status["canary_status"] == "rolled_back"
    assert status["reasons"][0].startswith("latency_tail: canary slower than"), status["reasons"]
    assert health_checks_before(await s.events(dep["id"]), "rollback_started") <= 8


async def test_judge_reads_prometheus_figures(
    embedded_stack: Stack, prometheus: Callable[[list[str]], PrometheusInstance]
) -> None:
    """With metrics_source prometheus (a real one scraping every app), checks judge Prometheus' figures,
    which agree with what the proxy saw."""
    s = embedded_stack
    prom = prometheus([f"{h}:{s.app_port}" for h in s.hosts])
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=30).start()
    config = {
        "stages": [20, 100],
        "stage_duration": 60,
        "health_check_interval": 1,
        "metrics_source": "prometheus",
        "prometheus": {"url": prom.url, "min_window": 10},
    }
    dep = (await s.deploy("v2", config)).json()
    deadline = asyncio.get_running_loop().time() + 40
    while True:
        checks = [e for e in await s.events(dep["id"]) if e["kind"] == "health_check"]
        judged = [e["metrics"] for e in checks if e["metrics"].get("source", {}).get("name") == "prometheus"]
        if len(judged) >= 3:
            break
        assert asyncio.get_running_loop().time() < deadline, [e["metrics"].get("source") for e in checks]
        await asyncio.sleep(0.5)
    await load.stop()
    last = judged[-1]
    assert last["source"]["ok"] and last["verdict"]["outcome"] != "fail", last["verdict"]["reasons"]
    # Prometheus' window (increase() over the stage) and the proxy's log cover nearly the same requests.
    for cohort in ("canary", "stable"):
        seen, logged = last[cohort]["requests"], last["proxy_view"][cohort]["requests"]
        assert logged > 0 and abs(seen - logged) <= 0.35 * logged + 5, (cohort, seen, logged)
