"""The threshold judge: canary against stable (or the whole-deployment baseline)."""

from __future__ import annotations

import json

import pytest

from canaryd.domain.config import CanaryConfig
from canaryd.domain.judge import Outcome, judge_threshold
from canaryd.domain.types import CohortStats

CONFIG = CanaryConfig()  # spec defaults: +5 pp errors, +50 % p95 (and > 25 ms), 3 health checks, 20 requests


def stats(requests: int, errors: int = 0, latency_ms: float = 100.0) -> CohortStats:
    """A cohort that saw `requests` requests, `errors` of them 5xx, all taking `latency_ms`."""
    cohort = CohortStats()
    for i in range(requests):
        cohort.record(503 if i < errors else 200, latency_ms)
    return cohort


NONE = CohortStats()


@pytest.mark.parametrize(
    ("case", "canary", "stable", "baseline", "health", "outcome", "reason"),
    [
        ("low canary traffic", stats(7), stats(500), NONE, 0, Outcome.INCONCLUSIVE,
         "canary has 7 of the 20 requests needed"),
        ("no traffic at all", NONE, NONE, NONE, 0, Outcome.INCONCLUSIVE,
         "canary has 0 of the 20 requests needed"),
        ("low stable traffic, no baseline", stats(100), stats(3), stats(12), 0, Outcome.INCONCLUSIVE,
         "stable has 3 of the 20 requests needed (and 12 over the whole deployment)"),
        ("30 % errors", stats(100, errors=30), stats(500, errors=1), NONE, 0, Outcome.FAIL,
         "error_rate: canary 30.0 % vs stable 0.2 % (+29.8 pp, limit +5.0 pp)"),
        ("equal", stats(100), stats(400), NONE, 0, Outcome.PASS, "canary within limits against stable"),
        ("errors just at the limit", stats(100, errors=6), stats(100, errors=1), NONE, 0, Outcome.PASS,
         "canary within limits"),
        ("errors just over the limit", stats(1000, errors=61), stats(100, errors=1), NONE, 0, Outcome.FAIL,
         "error_rate: canary 6.1 % vs stable 1.0 %"),
        ("slow +300 ms", stats(100, latency_ms=400), stats(400, latency_ms=100), NONE, 0, Outcome.FAIL,
         "latency_p95: canary"),
        ("tiny latency noise", stats(100, latency_ms=4), stats(400, latency_ms=2), NONE, 0, Outcome.PASS,
         "canary within limits"),
        ("slower, within 50 %", stats(100, latency_ms=140), stats(400, latency_ms=100), NONE, 0, Outcome.PASS,
         "canary within limits"),
        ("baseline fallback passes", stats(100), stats(2), stats(300), 0, Outcome.PASS,
         "canary within limits against stable baseline"),
        ("baseline fallback fails", stats(100, errors=30), stats(0), stats(300), 0, Outcome.FAIL,
         "error_rate: canary 30.0 % vs stable baseline 0.0 %"),
        ("health guard", stats(100), stats(400), NONE, 3, Outcome.FAIL,
         "health: 3 consecutive failed health checks of canary instances"),
        ("health guard without traffic", NONE, NONE, NONE, 4, Outcome.FAIL,
         "health: 4 consecutive failed health checks of canary instances"),
        ("health below the limit", stats(100), stats(400), NONE, 2, Outcome.PASS, "canary within limits"),
    ],
)  # fmt: skip
def test_judge_table(
    case: str,
    canary: CohortStats,
    stable: CohortStats,
    baseline: CohortStats,
    health: int,
    outcome: Outcome,
    reason: str,
) -> None:
    """Each situation gets the expected outcome and a reason a person can act on."""
    verdict = judge_threshold(canary, stable, baseline, health, CONFIG)
    assert verdict.outcome is outcome, verdict.reasons
    assert any(r.startswith(reason) for r in verdict.reasons), verdict.reasons


def test_failure_lists_only_failures() -> None:
    """A failing verdict's reasons name only what failed."""
    verdict = judge_threshold(stats(100, 30, 400), stats(400, 0, 100), NONE, 0, CONFIG)
    assert verdict.outcome is Outcome.FAIL
    assert [r.split(":")[0] for r in verdict.reasons] == ["error_rate", "latency_p95"]
    assert verdict.metric("health").outcome is Outcome.PASS


def test_slow_canary_figures() -> None:
    """The latency verdict carries the p95 figures of both cohorts."""
    verdict = judge_threshold(stats(100, latency_ms=400), stats(400, latency_ms=100), NONE, 0, CONFIG)
    figures = verdict.metric("latency_p95").figures
    assert figures["canary_p95_ms"] == pytest.approx(400, rel=0.05)
    assert figures["stable_p95_ms"] == pytest.approx(100, rel=0.05)


def test_thresholds_are_configurable() -> None:
    """A stricter error threshold fails what the default passes."""
    strict = CanaryConfig(error_rate_threshold=1.0)
    assert judge_threshold(stats(100, 3), stats(100), NONE, 0, CONFIG).outcome is Outcome.PASS
    assert judge_threshold(stats(100, 3), stats(100), NONE, 0, strict).outcome is Outcome.FAIL


def test_latency_data_missing_is_inconclusive() -> None:
    """Counts without a latency histogram cannot judge latency."""
    canary = CohortStats(requests=100, errors=0)
    verdict = judge_threshold(canary, stats(100), NONE, 0, CONFIG)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.reasons == ("latency_p95: no latency data for canary",)


@pytest.mark.parametrize(("stable", "compared_with"), [(stats(100), "stable"), (stats(5), "baseline")])
def test_snapshot_is_json(stable: CohortStats, compared_with: str) -> None:
    """The verdict's evidence survives json.dumps and says what the canary was compared with."""
    verdict = judge_threshold(stats(100), stable, stats(500), 0, CONFIG)
    snap = json.loads(json.dumps(verdict.snapshot()))
    assert snap["outcome"] == "pass"
    assert snap["compared_with"] == compared_with
    assert [m["metric"] for m in snap["metrics"]] == ["health", "error_rate", "latency_p95"]
