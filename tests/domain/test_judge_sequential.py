"""The sequential judge: guards, count tests with evidence, host comparisons, evidence carried over stages."""

from __future__ import annotations

import json
import math

import pytest

from canaryd.domain.config import CanaryConfig
from canaryd.domain.judge import (
    LEVEL_CEILING,
    Evidence,
    Observation,
    Outcome,
    Stream,
    Tally,
    alpha_shares,
    checks_per_bucket,
    judge_sequential,
    stage_end_alpha_shares,
)
from canaryd.domain.sequential import exact_look_false_rollback_rate
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
        # One check is one time bucket: however bad, it can multiply the evidence by at most
        # bucket_max_evidence, so it cannot roll back alone (a burst looks just like this).
        ("30 % errors in one bucket", stats(60, 18), stats(60, 0), 0, Outcome.INCONCLUSIVE,
         "error_rate: canary has 60 of the ~"),
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
    """Canary at 2× stable's errors, minute after minute, fails without a margin and not with margin 3."""
    canary, stable = [(400, 8)] * 20, [(400, 4)] * 20
    assert first_fail(minutes(canary, stable)) is not None
    relaxed = MINUTE.model_copy(update={"error_rate_margin": 3.0})
    last = minutes(canary, stable, relaxed)[-1][1]
    assert last.metric("error_rate").outcome is not Outcome.FAIL  # type: ignore[attr-defined]


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

    def stage(number: int, evidence: Evidence, checks: int = 3) -> tuple[Evidence, Outcome]:
        canary, stable = CohortStats(), CohortStats()
        outcome = Outcome.INCONCLUSIVE
        for _ in range(checks):
            canary, stable = canary.merge(stats(100, 4)), stable.merge(stats(100, 1))
            j = judge_sequential(judge(canary, stable, stage=number, evidence=evidence), MINUTE)
            evidence, outcome = j.evidence, j.verdict.outcome
        return evidence, outcome

    first, outcome = stage(0, Evidence())
    e1 = first.current["error_rate"]
    assert e1 > 0 and outcome is not Outcome.FAIL
    alone = stage(1, Evidence())[1]
    assert alone is not Outcome.FAIL
    # The same moderate evidence twice (in two stages) crosses the threshold that once did not.
    second, outcome = stage(1, first)
    assert second.carried["error_rate"] == pytest.approx(e1)
    assert outcome is Outcome.FAIL
    last = judge_sequential(
        judge(stats(900), CohortStats(), baseline=stats(600), stage=2, evidence=first), CONFIG
    )
    m = last.verdict.metric("error_rate")
    assert m.figures["rollout_canary_requests"] == 300  # the 100 % stage compared nothing
    assert last.evidence.carried["error_rate"] == pytest.approx(e1)
    assert m.figures["e_value"] == pytest.approx(math.exp(e1), rel=1e-3)


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


# --- time buckets: bursts, uneven cohorts, persistence, the stage-end look ---------------------------------

MINUTE = CanaryConfig(health_check_interval=60, stage_duration=1800)  # one check per bucket, 30 checks


def minutes(
    canary: list[tuple[int, int]], stable: list[tuple[int, int]], config: CanaryConfig = MINUTE, **kw: object
) -> list[tuple[int, object]]:
    """Feeds per-minute (requests, errors) of both cohorts, cumulatively, one check a minute.

    Returns (minute, verdict) for every check until the first fail.
    """
    c_total, s_total = CohortStats(), CohortStats()
    evidence = Evidence()
    share = kw.pop("share", 0.5)
    out: list[tuple[int, object]] = []
    for minute, ((cn, ce), (sn, se)) in enumerate(zip(canary, stable, strict=True), start=1):
        c_total = c_total.merge(stats(cn, ce))
        s_total = s_total.merge(stats(sn, se))
        obs = Observation(c_total, s_total, s_total, canary_share=share, evidence=evidence)  # type: ignore[arg-type]
        j = judge_sequential(obs, config)
        evidence = j.evidence
        out.append((minute, j.verdict))
        if j.verdict.outcome is Outcome.FAIL:
            break
    return out


def first_fail(run: list[tuple[int, object]]) -> int | None:
    minute, verdict = run[-1]
    return minute if verdict.outcome is Outcome.FAIL else None  # type: ignore[attr-defined]


def with_bursts(
    base: tuple[int, int], at: set[int], burst: tuple[int, int], n: int = 30
) -> list[tuple[int, int]]:
    return [burst if m in at else base for m in range(1, n + 1)]


@pytest.mark.parametrize(
    ("events", "theta0", "rate"),
    [
        # The bench's clean A/A cells (stable errors 1 %, 30 minutes): 1:1 at 10 / 50 req/min, 1:9 at
        # 2 / 10 / 50 req/min. The default's target (0.68 %) is spent where the test's sizes allow it.
        (6.0, 0.5, 0.00231),
        (30.0, 0.5, 0.00644),
        (6.0, 0.1, 0.00478),
        (30.0, 0.1, 0.00619),
        (150.0, 0.1, 0.00672),
    ],
)
def test_default_exact_look_false_rollback_rate(events: float, theta0: float, rate: float) -> None:
    """With the defaults the errors' exact look targets 0.68 % (4/5 of stage_end_alpha_independent
    0.0085) and, computed, rolls back an identical canary at most that often at the bench's traffic."""
    target = stage_end_alpha_shares(CanaryConfig())["error_rate"][1]
    assert target == pytest.approx(0.0068)
    computed = exact_look_false_rollback_rate(events, theta0, target, LEVEL_CEILING * target)
    assert computed == pytest.approx(rate, abs=5e-6)
    assert computed <= target


@pytest.mark.parametrize(
    ("case", "canary", "stable", "share", "fails_by"),
    [
        # independent bursts on the canary (20 % errors for a minute) among healthy minutes: not a rollback
        ("1:1, 200/min, 3 canary bursts", with_bursts((200, 2), {3, 11, 20}, (200, 40)), [(200, 2)] * 30, 0.5, None),
        ("1:1, 50/min, 4 canary bursts", with_bursts((50, 0), {1, 2, 9, 25}, (50, 10)), [(50, 1)] * 30, 0.5, None),
        ("1:9, 10/min, 3 canary bursts", with_bursts((10, 0), {4, 5, 17}, (10, 2)), [(90, 1)] * 30, 0.1, None),
        ("1:9, 200/min, 2 canary bursts", with_bursts((200, 2), {1, 2}, (200, 40)), [(1800, 18)] * 30, 0.1, None),
        # bursts that hit both cohorts in the same minute cancel within the bucket
        ("1:1, common bursts", with_bursts((200, 2), {2, 3, 4, 5}, (200, 40)),
         with_bursts((200, 2), {2, 3, 4, 5}, (200, 40)), 0.5, None),
        ("1:9, common bursts", with_bursts((50, 0), {2, 3, 4}, (50, 10)),
         with_bursts((450, 4), {2, 3, 4}, (450, 90)), 0.1, None),
        # a regression that persists is caught within minutes, equal or uneven cohorts
        ("1:1, 30 % errors every minute", [(60, 18)] * 30, [(60, 0)] * 30, 0.5, 6),
        ("1:9, 30 % errors every minute", [(20, 6)] * 30, [(180, 2)] * 30, 0.1, 6),
        ("1:1, ×5 at 200/min", [(200, 10)] * 30, [(200, 2)] * 30, 0.5, 12),
    ],
)  # fmt: skip
def test_bursts_and_persistence(
    case: str,
    canary: list[tuple[int, int]],
    stable: list[tuple[int, int]],
    share: float,
    fails_by: int | None,
) -> None:
    """Bursts (on one cohort or both) do not roll back an identical canary; a lasting regression does."""
    at = first_fail(minutes(canary, stable, share=share))
    if fails_by is None:
        assert at is None, case
    else:
        assert at is not None and at <= fails_by, (case, at)


def test_one_bucket_is_capped_and_says_so() -> None:
    """A single terrible bucket multiplies the evidence by at most bucket_max_evidence, shown in figures."""
    run = minutes([(200, 200)], [(200, 2)])
    figures = run[-1][1].metric("error_rate").figures  # type: ignore[attr-defined]
    assert figures["buckets"] == 1 and figures["buckets_at_cap"] == 1
    assert figures["e_value"] == pytest.approx(MINUTE.bucket_max_evidence, rel=1e-3)


def test_overdispersion_is_estimated_and_reported() -> None:
    """Bursty canary minutes show as the canary's over-dispersion and a design effect above 1."""
    run = minutes(with_bursts((200, 2), {3, 9}, (200, 40), n=12), [(200, 2)] * 12)
    figures = run[-1][1].metric("error_rate").figures  # type: ignore[attr-defined]
    assert isinstance(figures["overdispersion_canary"], float) and figures["overdispersion_canary"] > 0.02
    assert figures["overdispersion_stable"] == 0.0
    assert isinstance(figures["design_effect"], float) and figures["design_effect"] > 2
    steady = minutes([(200, 6)] * 12, [(200, 2)] * 12)
    assert steady[-1][1].metric("error_rate").figures["overdispersion_canary"] < 0.01  # type: ignore[attr-defined]


def test_common_bursts_do_not_temper_the_split() -> None:
    """Bursts that hit both cohorts in the same minutes raise both cohorts' over-dispersion, but the split
    of each minute's errors stays binomial: the common part is reported and the design effect stays ~1, so
    an identical canary passes as soon as on a quiet machine (not ~5 × later)."""
    bursty = with_bursts((200, 2), {3, 9}, (200, 40), n=12)
    run = minutes(bursty, bursty)
    figures = run[-1][1].metric("error_rate").figures  # type: ignore[attr-defined]
    assert isinstance(figures["overdispersion_canary"], float) and figures["overdispersion_canary"] > 0.02
    assert isinstance(figures["overdispersion_common"], float) and figures["overdispersion_common"] > 0.02
    assert figures["design_effect"] == pytest.approx(1.0, abs=0.05)
    assert run[-1][1].outcome is Outcome.PASS  # type: ignore[attr-defined]
    apart = minutes(bursty, with_bursts((200, 2), {5, 11}, (200, 40), n=12))
    assert apart[-1][1].metric("error_rate").figures["design_effect"] > 2  # type: ignore[attr-defined]


def test_stage_end_look_catches_what_the_sequential_test_did_not_yet() -> None:
    """×3 errors at 10 req/min on a 1:9 canary: not enough for the always-valid test, enough for the
    one fixed-sample look at the stage's end (p ≤ stage_end_alpha), which says so."""
    canary = [(10, 1 if m % 3 == 0 else 0) for m in range(1, 31)]  # 10 errors in 300 requests
    stable = [(90, 1)] * 30  # 30 in 2,700
    run = minutes(canary, stable, share=0.1)
    assert first_fail(run) == 30
    m = run[-1][1].metric("error_rate")  # type: ignore[attr-defined]
    assert m.reason.startswith(
        "error_rate: canary errors 10/300 (3.3 %) vs stable 30/2700 (1.1 %); at the stage's end"
    )
    assert m.figures["stage_end_p_value"] <= m.figures["stage_end_alpha"]
    off = minutes(canary, stable, MINUTE.model_copy(update={"stage_end_alpha": 0.0}), share=0.1)
    assert first_fail(off) is None


def test_exact_look_rejects_at_a_p_value_equal_to_its_level() -> None:
    """4 of 10 events on a 1:9 canary: p = P(Binomial(10, 0.1) ≥ 4) = 1.28 % is also the level the
    calibration picks (one of the test's own sizes); the two, summed in different orders, must not
    differ by rounding — the look rolls back. (At the target 0.008 this case was found with; the default
    0.0085 calibrates to the next size up, 1.31 %.)"""
    canary = [(10, 1 if m in {5, 12, 19, 26} else 0) for m in range(1, 31)]
    stable = [(90, 1 if m in {3, 8, 14, 20, 24, 29} else 0) for m in range(1, 31)]
    config = MINUTE.model_copy(update={"stage_end_alpha_independent": 0.008})
    run = minutes(canary, stable, config, share=0.1)
    assert first_fail(run) == 30
    m = run[-1][1].metric("error_rate")  # type: ignore[attr-defined]
    assert m.figures["stage_end_test"] == "exact"
    assert m.figures["stage_end_p_value"] == pytest.approx(m.figures["stage_end_alpha"], rel=1e-6)
    assert "4 canary errors counted against 1.0 expected, p=0.013 ≤ 0.013 (exact test" in m.reason


@pytest.mark.parametrize(
    ("case", "canary", "test", "fails_at"),
    [
        # The same 10 canary errors in 300 requests against 30 in 2,700 (1:9), spread or in two bursts.
        ("spread: the exact test of every event", [(10, 1 if m % 3 == 0 else 0) for m in range(1, 31)],
         "exact", 30),
        ("two bursts: the capped test", with_bursts((10, 0), {7, 19}, (10, 5)), "capped", None),
    ],
)  # fmt: skip
def test_stage_end_look_adapts_to_over_dispersion(
    case: str, canary: list[tuple[int, int]], test: str, fails_at: int | None
) -> None:
    """The stage-end look tests every canary event exactly unless a cohort's buckets are over-dispersed
    (Tarone's z above the gate), and the verdict says which test it used and why."""
    run = minutes(canary, [(90, 1)] * 30, share=0.1)
    assert first_fail(run) == fails_at, case
    figures = run[-1][1].metric("error_rate").figures  # type: ignore[attr-defined]
    assert figures["stage_end_test"] == test, case
    z = figures["dispersion_z_canary"]
    assert isinstance(z, float) and (z > 3 if test == "capped" else z <= 3), case
    assert figures["stage_end_p_value"] is not None, case
    if fails_at is not None:
        reason = run[-1][1].metric("error_rate").reason  # type: ignore[attr-defined]
        assert f"exact test, dispersion z {z:.2f}/" in reason, reason


def canary_minutes(doubles: set[int], singles: set[int], requests: int = 10) -> list[tuple[int, int]]:
    """30 minutes of `requests` canary requests: 2 errors in the `doubles` minutes, 1 in the `singles`."""
    return [(requests, 2 if m in doubles else 1 if m in singles else 0) for m in range(1, 31)]


@pytest.mark.parametrize(
    ("case", "canary", "stable", "fails_at", "capped_p"),
    [
        # 1:9, ~10 canary requests a bucket (too few for the gate to see a burst of two errors), against
        # 30 stable errors of 2,700; every case's exact test is at its level (p ≤ ~0.011).
        # 10 errors spread one a minute: canary z -1.27, no sign of clustering, the exact test decides
        ("spread", canary_minutes(set(), {3, 6, 9, 12, 15, 18, 21, 24, 27, 30}), [(90, 1)] * 30, 30, None),
        # 10 errors, 8 of them in four 2-error minutes: z 2.11; the capped test counts 6 — no rollback
        ("four bursts of 2", canary_minutes({4, 13, 22, 27}, {7, 17}), [(90, 1)] * 30, None, (0.17, 0.19)),
        # 10 errors, three 2-error minutes: z 1.27; capped p 0.0135 just above the level 0.011
        ("three bursts of 2", canary_minutes({4, 6, 13}, {2, 7, 10, 17}), [(90, 1)] * 30, None, (0.013, 0.014)),
        # 11 errors, four 2-error minutes: z 1.68; the capped test counts 10 and agrees (p 0.0051): rolled back
        ("more than bursts", canary_minutes({4, 6, 13, 18}, {2, 7, 10}), [(90, 1)] * 30, 30, (0.005, 0.0052)),
        # ~50 canary requests a bucket: a burst shows to the gate, the exact test decides alone
        ("50/min", canary_minutes({4, 13, 22, 27}, {7, 17}, 50), [(450, 4)] * 30, None, None),
    ],
)  # fmt: skip
def test_exact_look_in_small_buckets_needs_the_capped_test_when_the_canary_clusters(
    case: str,
    canary: list[tuple[int, int]],
    stable: list[tuple[int, int]],
    fails_at: int | None,
    capped_p: tuple[float, float] | None,
) -> None:
    """Where the canary's buckets are too small for the dispersion gate to see bursts (under 20 requests
    on average) and its dispersion z is above 1, the exact look rolls back only if the capped test —
    each bucket's events counted up to its allowance — gives a p-value at the same level; both p-values
    are in the figures, and a rollback's reason says the capped test agreed."""
    run = minutes(canary, stable, share=0.1)
    assert first_fail(run) == fails_at, case
    m = run[-1][1].metric("error_rate")  # type: ignore[attr-defined]
    figures = m.figures
    assert figures["stage_end_test"] == "exact", case
    p, level = figures["stage_end_p_value"], figures["stage_end_alpha"]
    assert isinstance(p, float) and isinstance(level, float)
    assert (p <= level) is (case != "50/min"), case
    capped = figures["stage_end_capped_p_value"]
    if capped_p is None:
        assert capped is None, case
    else:
        assert isinstance(capped, float) and capped_p[0] <= capped <= capped_p[1], (case, capped)
    if fails_at is not None and capped_p is not None:
        assert (
            "canary's z is above 1: the capped test agrees, 10 counted against 4.1 expected, p=0.0051"
            in m.reason
        ), m.reason
    elif fails_at is not None:
        assert "capped test agrees" not in m.reason, m.reason


def test_capped_agreement_survives_the_evidence_round_trip() -> None:
    """The capped test's p-value, once the look asked for it, is carried in the evidence's JSON."""
    stream = Stream(end_p=0.005, end_p_capped=0.18, end_test="exact", end_level=0.011)
    evidence = Evidence(streams={"error_rate": stream})
    raw = json.loads(json.dumps(evidence.to_json()))
    assert Evidence.from_json(raw).streams["error_rate"].end_p_capped == 0.18
    assert (
        Evidence.from_json(json.loads(json.dumps(Evidence(streams={"error_rate": Stream()}).to_json())))
        .streams["error_rate"]
        .end_p_capped
        is None
    )


def test_pass_states_the_tolerance() -> None:
    """A pass says which regression it rules out, and the figures carry the setting."""
    verdict = judge_sequential(judge(stats(2000, 20), stats(2000, 20)), CONFIG).verdict
    m = verdict.metric("error_rate")
    assert m.outcome is Outcome.PASS
    assert "enough traffic to have caught +5 pp errors with power 0.8" in m.reason
    assert m.figures["pass_rules_out_ratio"] == 3.0 and m.figures["pass_rules_out_pp"] == 5.0


def test_evidence_written_before_time_buckets_is_read() -> None:
    """Evidence JSON of the previous version (no streams) still loads; its e-value is carried on."""
    old = {
        "stage": 1,
        "carried": {"error_rate": 2.0, "latency_tail": 0.0},
        "prior": {"error_rate": [300, 9, 300, 3], "latency_tail": [300, 0, 300, 0]},
        "current": {"error_rate": 0.5},
        "latest": {"error_rate": [100, 3, 100, 1]},
        "host_checks": 0,
        "cpu_worse": 0,
        "memory_worse": 0,
        "source_failures": 0,
    }
    evidence = Evidence.from_json(old)
    assert evidence.streams == {} and evidence.carried["error_rate"] == 2.0
    j = judge_sequential(judge(stats(100, 1), stats(100, 1), stage=1, evidence=evidence), CONFIG)
    stream = j.evidence.streams["error_rate"]
    assert stream.stage_start == pytest.approx(2.0)
    assert Evidence.from_json(json.loads(json.dumps(j.evidence.to_json()))) == j.evidence


def test_a_canary_beyond_the_size_a_pass_rules_out_never_passes() -> None:
    """34 % errors against none, in a stage too short for the capped test to fail: inconclusive, not pass."""
    run = minutes([(100, 34)] * 3, [(100, 0)] * 3)
    m = run[-1][1].metric("error_rate")  # type: ignore[attr-defined]
    assert m.outcome is Outcome.INCONCLUSIVE
    assert "the canary looks at least +5 pp errors but it is not shown yet" in m.reason


@pytest.mark.parametrize(
    ("interval", "stage", "expected"), [(10, 300, 6), (60, 1800, 1), (1, 30, 6), (1, 2, 1), (10, 3600, 6)]
)
def test_buckets_shrink_for_short_stages(interval: int, stage: int, expected: int) -> None:
    """A bucket is bucket_seconds, at most a fifth of the stage, at least one check."""
    # model_copy: the e2e tests' short stages are below the API's 60 s minimum
    config = CanaryConfig().model_copy(update={"health_check_interval": interval, "stage_duration": stage})
    assert checks_per_bucket(config) == expected


def test_short_stage_catches_a_bad_canary_at_its_end() -> None:
    """With 2-second stages checked every second (one check a bucket), 30 % errors fail at the stage end."""
    config = CanaryConfig().model_copy(update={"health_check_interval": 1, "stage_duration": 2})
    evidence, canary, stable = Evidence(), CohortStats(), CohortStats()
    outcomes = []
    for _ in range(2):
        canary, stable = canary.merge(stats(6, 2)), stable.merge(stats(54, 0))
        j = judge_sequential(Observation(canary, stable, stable, canary_share=0.1, evidence=evidence), config)
        evidence = j.evidence
        outcomes.append(j.verdict.outcome)
    assert outcomes == [Outcome.INCONCLUSIVE, Outcome.FAIL]
    assert "at the stage's end" in j.verdict.reasons[0]


def test_the_full_stage_asks_no_more_than_the_evidence_it_carries() -> None:
    """The 100 % stage compares nothing, so a pass rests on the earlier stages' evidence: the requests it
    needs come from those stages' buckets, not from a stage with no stable traffic (whose one-cohort buckets
    made every bursty rollout need more than it could ever have, and pause before promoting)."""
    canary, stable = CohortStats(), CohortStats()
    evidence, outcome = Evidence(), Outcome.INCONCLUSIVE
    needed_before = 0
    for check in range(10):
        errors = 20 if check in (2, 6) else 1  # bursts that hit both cohorts in the same minute
        canary, stable = canary.merge(stats(100, errors)), stable.merge(stats(100, errors))
        j = judge_sequential(judge(canary, stable, stage=0, evidence=evidence), MINUTE)
        evidence, outcome = j.evidence, j.verdict.metric("error_rate").outcome
        needed_before = j.verdict.metric("error_rate").figures["canary_requests_needed"]
    assert outcome is Outcome.PASS, j.verdict.metric("error_rate").reason
    full = judge_sequential(
        judge(stats(2000, 20), CohortStats(), baseline=stable, canary_share=1.0, stage=1, evidence=evidence),
        MINUTE,
    )
    metric = full.verdict.metric("error_rate")
    assert metric.figures["canary_requests_needed"] <= needed_before
    assert metric.outcome is Outcome.PASS, metric.reason
