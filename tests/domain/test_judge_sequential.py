"""The sequential judge: guards, count tests with evidence, host comparisons, evidence carried over stages."""

from __future__ import annotations

import json

import pytest

from canaryd.domain.config import CanaryConfig
from canaryd.domain.judge import (
    Evidence,
    Observation,
    Outcome,
    Tally,
    alpha_shares,
    judge_sequential,
)
from canaryd.domain.types import CohortStats, HostLoad

CONFIG = CanaryConfig()


def stats(requests: int, errors: int = 0, latency_ms: float = 100.0, slow: int = 0) -> CohortStats:
    """`requests` requests, `errors` of them 5xx, `slow` of them 500 ms slower than `latency_ms`."""
    cohort = CohortStats()
    for i in range(requests):
        cohort.record(503 if i < errors else 200, latency_ms + (500 if i >= requests - slow else 0))
    return cohort


def judge(canary: CohortStats, stable: CohortStats, **kw: object) -> Observation:
    """An observation with stable as its own baseline and an even split."""
    return Observation(canary, stable, kw.pop("baseline", stable), **{"canary_share": 0.5, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "canary", "stable", "health", "outcome", "reason"),
    [
        ("identical and plenty", stats(600, 6), stats(600, 6), 0, Outcome.PASS,
         "error_rate: canary errors 6/600 (1.0 %) vs stable 6/600 (1.0 %); enough traffic"),
        ("too little traffic", stats(37), stats(40), 0, Outcome.INCONCLUSIVE,
         "error_rate: canary has 37 of the ~"),
        ("30 % errors", stats(60, 18), stats(60, 0), 0, Outcome.FAIL,
         "error_rate: canary errors 18/60 (30.0 %) vs stable 0/60 (0.0 %); e="),
        ("slower by 300 ms", stats(60, latency_ms=400), stats(60, latency_ms=100), 0, Outcome.FAIL,
         "latency_tail: canary slower than"),
        ("tail regression", stats(400, slow=40), stats(400, slow=4), 0, Outcome.FAIL,
         "latency_tail: canary slower than"),
        ("health guard", stats(600), stats(600), 3, Outcome.FAIL,
         "health: 3 consecutive failed health checks of canary instances"),
        ("health guard without traffic", CohortStats(), CohortStats(), 3, Outcome.FAIL, "health: 3"),
        ("no traffic at all", CohortStats(), CohortStats(), 0, Outcome.INCONCLUSIVE,
         "error_rate: no stable traffic to compare with yet"),
        ("canary gets nothing", CohortStats(), stats(40), 0, Outcome.FAIL,
         "no_data: the canary received none of the ~40 requests expected at 50 % of traffic"),
    ],
)  # fmt: skip
def test_sequential_table(
    case: str, canary: CohortStats, stable: CohortStats, health: int, outcome: Outcome, reason: str
) -> None:
    """Each row: the overall outcome and the first reason given."""
    verdict = judge_sequential(judge(canary, stable, health_failures=health), CONFIG).verdict
    assert verdict.outcome is outcome, (case, verdict.reasons)
    assert verdict.reasons[0].startswith(reason), (case, verdict.reasons)


def test_inconclusive_says_what_it_waits_for() -> None:
    """An inconclusive metric names how many requests it has, how many it needs and the regression size."""
    verdict = judge_sequential(judge(stats(37), stats(40)), CONFIG).verdict
    m = verdict.metric("error_rate")
    needed = m.figures["canary_requests_needed"]
    assert isinstance(needed, int) and needed > 37
    assert f"canary has 37 of the ~{needed} requests needed to rule out +5 pp errors" in m.reason


def test_exposure_is_computed_not_fixed() -> None:
    """The requests a pass needs follow alpha, power and the regression size, not a constant."""

    def needed(**kw: object) -> object:
        v = judge_sequential(judge(stats(37), stats(40)), CanaryConfig.model_validate(kw)).verdict
        return v.metric("error_rate").figures["canary_requests_needed"]

    base = needed()
    assert isinstance(base, int)
    for stricter in ({"power": 0.95}, {"alpha": 0.001}, {"detect_min_increase": 1.0}):
        more = needed(**stricter)
        assert isinstance(more, int) and more > base, stricter


def test_ratio_sets_the_size_when_stable_errs_a_lot() -> None:
    """With stable at 10 % errors, ×3 is the regression to rule out (bigger than +5 pp)."""
    v = judge_sequential(judge(stats(30, 3), stats(30, 3)), CONFIG).verdict
    assert "rule out ×3 errors" in v.metric("error_rate").reason


def test_margin_tolerates_a_canary_within_it() -> None:
    """Canary at 2× stable's errors fails without a margin and is not failed with margin 3."""
    canary, stable = stats(2000, 80), stats(2000, 40)
    assert judge_sequential(judge(canary, stable), CONFIG).verdict.outcome is Outcome.FAIL
    relaxed = CanaryConfig(error_rate_margin=3.0)
    assert (
        judge_sequential(judge(canary, stable), relaxed).verdict.metric("error_rate").outcome
        is not Outcome.FAIL
    )


def test_slo_ceilings_fail_on_the_canary_alone() -> None:
    """With ceilings set, a canary far above them fails even when stable is just as bad."""
    config = CanaryConfig(error_rate_ceiling=5.0, latency_ceiling_ms=300)
    bad = stats(100, 30, latency_ms=400)
    verdict = judge_sequential(judge(bad, bad), config).verdict
    assert verdict.outcome is Outcome.FAIL
    failed = {m.metric for m in verdict.metrics if m.outcome is Outcome.FAIL}
    assert failed == {"error_rate_slo", "latency_slo"}
    assert any(
        r.startswith("error_rate_slo: canary errors 30/100 (30.0 %) against the 5 %") for r in verdict.reasons
    )


def test_alpha_is_shared_by_the_tests() -> None:
    """The tests' shares add up to alpha; each ceiling takes a share."""
    assert sum(alpha_shares(CONFIG).values()) == pytest.approx(CONFIG.alpha)
    with_slos = CanaryConfig(error_rate_ceiling=5.0, latency_ceiling_ms=300)
    shares = alpha_shares(with_slos)
    assert set(shares) == {"error_rate", "latency_tail", "error_rate_slo", "latency_slo"}
    assert sum(shares.values()) == pytest.approx(with_slos.alpha)
    assert shares["error_rate"] < alpha_shares(CONFIG)["error_rate"]


def test_cpu_regression_holds_but_never_rolls_back() -> None:
    """Canary CPU far above stable in most checks makes the stage inconclusive, not failed."""
    evidence = Evidence()
    hot, cool = (HostLoad(90.0, 40.0),), (HostLoad(20.0, 40.0), HostLoad(22.0, 41.0))
    for _ in range(3):
        j = judge_sequential(
            judge(stats(600, 6), stats(600, 6), canary_load=hot, stable_load=cool, evidence=evidence), CONFIG
        )
        evidence = j.evidence
    assert j.verdict.outcome is Outcome.INCONCLUSIVE
    assert j.verdict.metric("cpu").outcome is Outcome.FAIL
    assert j.verdict.reasons[0].startswith("cpu: canary 90.0 % vs stable 21.0 % (tolerance +20 pp")
    assert j.verdict.metric("memory").outcome is Outcome.PASS


def test_missing_host_readings_do_not_block() -> None:
    """No host readings is reported, and does not keep a canary from passing."""
    j = judge_sequential(judge(stats(600, 6), stats(600, 6), canary_load=(HostLoad(None, None),)), CONFIG)
    assert j.verdict.outcome is Outcome.PASS
    assert j.verdict.metric("cpu").reason == "cpu: no host readings"


def test_evidence_multiplies_across_stages() -> None:
    """A stage's e-value is carried into the next; the 100 % stage (no stable) keeps it and the exposure."""
    first = judge_sequential(judge(stats(300, 12), stats(300, 3), stage=0), CONFIG)
    e1 = first.evidence.current["error_rate"]
    assert e1 > 0 and first.verdict.outcome is not Outcome.FAIL
    second = judge_sequential(judge(stats(300, 12), stats(300, 3), stage=1, evidence=first.evidence), CONFIG)
    assert second.evidence.carried["error_rate"] == pytest.approx(e1)
    assert second.verdict.metric("error_rate").figures["rollout_canary_requests"] == 600
    # Twice the same moderate evidence crosses the threshold that once did not.
    assert second.verdict.outcome is Outcome.FAIL
    last = judge_sequential(
        judge(stats(900), CohortStats(), baseline=stats(600), stage=2, evidence=first.evidence), CONFIG
    )
    m = last.verdict.metric("error_rate")
    assert m.figures["rollout_canary_requests"] == 300  # the 100 % stage compared nothing
    assert last.evidence.carried["error_rate"] == pytest.approx(e1)


def test_operator_skipped_stage_is_folded_in() -> None:
    """Evidence from a stage that ended without the engine (operator's promote) is still carried."""
    ev = Evidence(0, current={"error_rate": 1.5}, latest={"error_rate": Tally(100, 3, 100, 1)})
    moved = ev.at_stage(1)
    assert moved.carried["error_rate"] == 1.5 and moved.prior["error_rate"] == Tally(100, 3, 100, 1)
    assert moved.current == {} and moved.stage == 1
    assert ev.at_stage(0) is ev


def test_evidence_and_snapshot_are_json() -> None:
    """Evidence survives a JSON round trip; the verdict's snapshot is JSON-able and carries the statistic."""
    j = judge_sequential(judge(stats(300, 9), stats(300, 3)), CONFIG)
    raw = json.loads(json.dumps(j.evidence.to_json()))
    assert Evidence.from_json(raw) == j.evidence
    snap = json.loads(json.dumps(j.verdict.snapshot()))
    figures = next(m for m in snap["metrics"] if m["metric"] == "error_rate")["figures"]
    assert {"e_value", "e_threshold", "canary_errors", "stable_requests", "canary_requests_needed"} <= set(
        figures
    )
    assert Evidence.from_json("garbage") == Evidence()
