"""/metrics during a real canary (embedded canaryd, real nginx, sample apps) passes `promtool check metrics`
and carries every family docs/operations.md promises, with figures that match what happened."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from canaryd.observability import Metrics, rollback_reason
from tests.fixtures.stack import LoadGenerator, Stack

FAST = {
    "stages": [10, 50, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "min_requests": 10,
    "judge": "threshold",  # decides on min_requests: no inconclusive pause on a busy machine
    # p95 of a few dozen requests on a loaded test machine is noise; the bad canary fails on errors.
    "latency_min_difference_ms": 5000,
}
FAMILIES = {
    "canaryd_deployments": "gauge",
    "canaryd_canary_share_percent": "gauge",
    "canaryd_stage_transitions": "counter",
    "canaryd_rollbacks": "counter",
    "canaryd_judge_verdicts": "counter",
    "canaryd_tick_lag_seconds": "histogram",
    "canaryd_proxy_apply_seconds": "histogram",
    "canaryd_api_request_duration_seconds": "histogram",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: `apt-get install prometheus` (scripts/setup.sh does)", pytrace=False
        )
    return path


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(s: Stack) -> str:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{s.base}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


async def test_metrics_during_a_canary_pass_promtool(embedded_stack: Stack) -> None:
    s = embedded_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    dep = (await s.deploy("v2", FAST)).json()
    await s.wait(dep["id"], until={"monitoring"})
    for _ in range(300):  # until the first check's verdict is recorded
        during = await scrape(s)
        if "canaryd_judge_verdicts_total{" in during:
            break
        await asyncio.sleep(0.1)
    checked = promtool_check(during)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    found = {f.name: f.type for f in text_string_to_metric_families(during)}
    for name, kind in FAMILIES.items():
        assert found.get(name) == kind, (name, found.get(name))
    for family in FAMILIES:
        assert f"# HELP {family}" in during and f"# TYPE {family}" in during
    now = samples(during)
    assert now[("canaryd_deployments", (("state", "monitoring"),))] == 1
    assert now[("canaryd_deployments", (("state", "completed"),))] == 0
    assert 0 < now[("canaryd_canary_share_percent", (("application", "shop"),))] <= 50
    assert now[("canaryd_proxy_apply_seconds_count", (("proxy", "nginx"),))] >= 2
    assert now[("canaryd_tick_lag_seconds_count", ())] >= 3

    await s.wait(dep["id"])
    bad = (await s.deploy("v3-bad", FAST)).json()
    await s.wait(bad["id"])
    await load.stop()
    after = await scrape(s)
    checked = promtool_check(after)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    end = samples(after)
    assert end[("canaryd_deployments", (("state", "completed"),))] == 1
    assert end[("canaryd_deployments", (("state", "rolled_back"),))] == 1
    assert ("canaryd_canary_share_percent", (("application", "shop"),)) not in end
    assert end[("canaryd_rollbacks_total", (("reason", "errors"),))] == 1
    assert end[("canaryd_stage_transitions_total", (("kind", "completed"), ("to_state", "completed")))] == 1
    assert (
        end[("canaryd_stage_transitions_total", (("kind", "stage_advanced"), ("to_state", "monitoring")))]
        >= 3
    )
    assert end[("canaryd_judge_verdicts_total", (("judge", "threshold"), ("outcome", "fail")))] >= 1
    route = "/api/v1/applications/{application_id}/deployments"
    posts = [
        v for (n, lb), v in end.items() if n.endswith("duration_seconds_count") and ("route", route) in lb
    ]
    assert sum(posts) == 2


def test_each_runtime_has_its_own_registry() -> None:
    """Two Metrics objects share nothing (no global registry, no import-time state)."""
    a, b = Metrics(), Metrics()
    a.transition("rollback_started", "rolling_back", "operator")
    assert b'canaryd_rollbacks_total{reason="operator"} 1.0' in a.render()
    assert b"canaryd_rollbacks_total{reason=" not in b.render()


def test_rollback_reasons_are_a_fixed_set() -> None:
    operator = {"kind": "rollback_started", "actor": "token:ci", "reasons": ["rollback by token:ci"]}
    judge = {
        "kind": "rollback_started",
        "actor": "canaryd",
        "metrics": {
            "verdict": {"outcome": "fail", "metrics": [{"metric": "latency_p95", "outcome": "fail"}]}
        },
    }
    failure = {"kind": "rollback_started", "actor": "canaryd", "reasons": ["deploy command exited 3"]}
    assert [rollback_reason(e) for e in (operator, judge, failure)] == ["operator", "latency", "step_failed"]
    m = Metrics()
    m.transition("rollback_started", "rolling_back", "a free-text reason")
    assert b'reason="other"' in m.render()
