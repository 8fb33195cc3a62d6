"""The always-valid count test: exact e-values, its error control, and the exposure it needs."""

from __future__ import annotations

import math
import random

import pytest

from canaryd.domain.sequential import (
    RATIOS,
    attained_size,
    binomial_tail,
    binomial_upper_tails,
    bucket_log_lr,
    calibrated_level,
    common_correlation,
    convolve,
    counted_distribution,
    design_effect,
    dispersion_z,
    events_needed,
    events_needed_mixture,
    exact_look_false_rollback_rate,
    excess_correlation,
    log_e_mixture,
    log_e_value,
    log_inc_beta,
    log_mixture,
    null_share,
    upper_tail,
)


def integrate(a: float, b: float, x: float, steps: int = 20_000) -> float:
    """I_x(a, b) by the midpoint rule (for a, b ≥ 1 the integrand is smooth)."""
    h = x / steps
    area = sum(((i + 0.5) * h) ** (a - 1) * (1 - (i + 0.5) * h) ** (b - 1) for i in range(steps)) * h
    return area / math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))


@pytest.mark.parametrize(("a", "b", "x"), [(2, 3, 0.4), (5.5, 1.2, 0.9), (1.3, 7, 0.05), (30, 40, 0.3)])
def test_incomplete_beta_matches_integration(a: float, b: float, x: float) -> None:
    """The continued fraction agrees with numerical integration."""
    assert math.exp(log_inc_beta(a, b, x)) == pytest.approx(integrate(a, b, x), rel=1e-6)


@pytest.mark.parametrize("theta0", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("n", [1, 7, 60])
def test_e_value_has_expectation_one_under_the_null(theta0: float, n: int) -> None:
    """E[e-value] = 1 exactly when events split with probability θ0 (it is a fair bet)."""
    mean = sum(
        math.comb(n, x) * theta0**x * (1 - theta0) ** (n - x) * math.exp(log_e_value(x, n - x, theta0))
        for x in range(n + 1)
    )
    assert mean == pytest.approx(1.0, abs=1e-9)


def test_e_value_grows_with_canary_events_and_falls_with_stable_ones() -> None:
    """More canary events is more evidence; more stable events is less; no events is none."""
    assert log_e_value(0, 0, 0.5) == 0.0
    assert log_e_value(6, 2, 0.5) > log_e_value(5, 2, 0.5) > log_e_value(5, 3, 0.5)
    assert log_e_value(0, 20, 0.5) < 0


def test_no_traffic_share_means_no_evidence() -> None:
    """A cohort without traffic (θ0 at 0 or 1) gives an e-value of 1, not an error."""
    assert log_e_value(5, 0, 1.0) == 0.0
    assert log_e_value(5, 0, 0.0) == 0.0


def test_null_share_with_margin() -> None:
    """θ0 = mρ / (mρ + 1 - ρ): equal shares and margin 2 give 2/3."""
    assert null_share(0.5) == 0.5
    assert null_share(0.5, 2.0) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        null_share(1.5)


def test_checked_every_step_false_alarms_stay_below_alpha() -> None:
    """Looked at after every event for 400 events under the null, it crosses 1/α in at most α of runs."""
    rng = random.Random(7)
    alpha, runs, crossed = 0.05, 400, 0
    for _ in range(runs):
        x = y = 0
        for _ in range(400):
            if rng.random() < 0.5:
                x += 1
            else:
                y += 1
            if log_e_value(x, y, 0.5) >= math.log(1 / alpha):
                crossed += 1
                break
    assert crossed / runs <= alpha


def test_events_needed_falls_as_the_regression_grows() -> None:
    """Bigger regressions need fewer events; ×3 at equal shares needs a few dozen."""
    needs = [events_needed(0.5, null_share(0.5, r), 0.02) for r in (1.5, 2, 3, 6)]
    assert all(n is not None for n in needs)
    values = [n for n in needs if n is not None]
    assert values == sorted(values, reverse=True)
    assert 30 < values[2] < 120


def test_events_needed_delivers_the_power() -> None:
    """At the returned expected count, simulated one-look detection reaches the asked-for power."""
    theta0, theta1, alpha = 0.5, 0.75, 0.02
    lam = events_needed(theta0, theta1, alpha, power=0.8)
    assert lam is not None
    rng = random.Random(3)
    hits = 0
    for _ in range(2000):
        n, t = 0, rng.expovariate(1.0)
        while t < lam:  # Poisson(lam) events
            n += 1
            t += rng.expovariate(1.0)
        x = sum(rng.random() < theta1 for _ in range(n))
        hits += log_e_value(x, n - x, theta0) >= math.log(1 / alpha)
    assert hits / 2000 >= 0.78  # 0.8 minus Monte Carlo slack


def test_events_needed_refuses_what_cannot_be_shown() -> None:
    """No regression (θ1 ≤ θ0) or nonsense input gives None."""
    assert events_needed(0.5, 0.5, 0.02) is None
    assert events_needed(0.5, 0.4, 0.02) is None
    assert events_needed(0.5, 0.75, 1.5) is None


# --- the time-bucket test -------------------------------------------------------------------------------


@pytest.mark.parametrize("theta0", [0.1, 0.5])
@pytest.mark.parametrize("n", [1, 5, 40])
def test_bucket_likelihood_ratios_are_fair_bets_and_tempering_or_capping_only_lowers_them(
    theta0: float, n: int
) -> None:
    """Each alternative's likelihood ratio has expectation 1 under the null; raised to 1/φ or capped, ≤ 1."""
    pmf = [math.comb(n, x) * theta0**x * (1 - theta0) ** (n - x) for x in range(n + 1)]
    for j in range(len(RATIOS)):
        lrs = [bucket_log_lr(x, n - x, theta0)[j] for x in range(n + 1)]
        assert sum(p * math.exp(v) for p, v in zip(pmf, lrs, strict=True)) == pytest.approx(1.0, abs=1e-9)
        tempered = sum(p * math.exp(v / 3.0) for p, v in zip(pmf, lrs, strict=True))
        capped = sum(p * math.exp(min(v, math.log(2.5))) for p, v in zip(pmf, lrs, strict=True))
        assert tempered <= 1 + 1e-12 and capped <= 1 + 1e-12


def test_mixture_weights_the_alternatives() -> None:
    """The mixture of identical sums is that sum; more canary events is more evidence."""
    assert log_mixture([1.5] * len(RATIOS)) == pytest.approx(1.5)
    assert log_e_mixture(6, 2, 0.5) > log_e_mixture(5, 2, 0.5) > log_e_mixture(5, 3, 0.5)


def test_counted_distribution_and_convolution_are_exact() -> None:
    """min(x, cap(y)) of a binomial, and the sum of two such counts, against enumeration."""
    theta0, caps = 0.3, [2, 2, 3, 3, 4]  # caps[y] for y = 0..4 stable events
    offset, dist = counted_distribution(4, theta0, caps)
    brute = [0.0] * 5
    for x in range(5):
        brute[min(x, caps[4 - x])] += math.comb(4, x) * theta0**x * (1 - theta0) ** (4 - x)
    assert offset == 0 and sum(dist) == pytest.approx(1.0)
    assert dist == pytest.approx(brute[: len(dist)]) and sum(brute[len(dist) :]) == 0
    total_offset, total = convolve((offset, dist), (2, [0.5, 0.5]))
    assert total_offset == 2 and sum(total) == pytest.approx(1.0)
    assert upper_tail(total_offset, total, 2) == 1.0
    assert upper_tail(total_offset, total, 4) == pytest.approx(
        sum(p * q for i, p in enumerate(dist) for j, q in enumerate([0.5, 0.5]) if i + j >= 2)
    )


def test_excess_correlation_sees_bursts_not_steady_rates() -> None:
    """Per-bucket counts that vary far beyond binomial noise give r̂ > 0; steady counts give 0."""
    steady = bucket_sums([(200, 6)] * 20)
    bursty = bucket_sums([(200, 2)] * 18 + [(200, 40)] * 2)
    assert excess_correlation(steady) == 0.0
    assert 0.05 < excess_correlation(bursty) < 0.3
    assert design_effect(0.0, 0.0, 200, 200, 0.5) == 1.0
    assert design_effect(0.1, 0.0, 201, 201, 0.5) == pytest.approx(11.0)


def cross_sums(canary: list[tuple[int, int]], stable: list[tuple[int, int]]) -> list[float]:
    """[Σ n_c n_s, Σ x_c x_s, Σ x_c n_s, Σ n_c x_s] of paired buckets given as (requests, events)."""
    pairs = list(zip(canary, stable, strict=True))
    return [
        float(sum(nc * ns for (nc, _), (ns, _) in pairs)),
        float(sum(x * y for (_, x), (_, y) in pairs)),
        float(sum(x * ns for (_, x), (ns, _) in pairs)),
        float(sum(nc * y for (nc, _), (_, y) in pairs)),
    ]


def test_common_bursts_leave_the_split_binomial() -> None:
    """Bursts in the same buckets of both cohorts are common over-dispersion: it takes the design effect
    back to about 1. Bursts of one cohort (or in other buckets) are not, and leave it as it was."""
    calm, burst = (200, 2), (200, 40)
    both = [calm] * 18 + [burst] * 2
    c, s = bucket_sums(both), bucket_sums(both)
    r_c, r_s = excess_correlation(c), excess_correlation(s)
    r_x = common_correlation(c, s, cross_sums(both, both), r_c, r_s)
    assert r_c > 0.05 and r_x == pytest.approx(math.sqrt(r_c * r_s))
    assert design_effect(r_c, r_s, 200, 200, 0.5) > 10
    assert design_effect(r_c, r_s, 200, 200, 0.5, r_x) == pytest.approx(1.0)
    apart = [burst] * 2 + [calm] * 18
    r_bursts_apart = excess_correlation(bucket_sums(apart))
    r_apart = common_correlation(c, bucket_sums(apart), cross_sums(both, apart), r_c, r_bursts_apart)
    assert r_apart == 0.0  # bursts in other buckets: negative covariance, clipped
    steady = [calm] * 20
    r_steady = excess_correlation(bucket_sums(steady))
    assert common_correlation(c, bucket_sums(steady), cross_sums(both, steady), r_c, r_steady) == 0.0
    assert common_correlation(c, s, [0.0, 0.0, 0.0, 0.0], r_c, r_s) == 0.0


def test_mixture_exposure_shrinks_with_the_effect() -> None:
    """A larger regression needs fewer events to be caught with the same power."""
    small = events_needed_mixture(0.5, 0.75, 0.016)
    large = events_needed_mixture(0.5, 0.9, 0.016)
    assert small is not None and large is not None and large < small


def bucket_sums(buckets: list[tuple[int, int]]) -> list[float]:
    """[Σn, Σx, Σx², Σx·n, Σn²] of buckets given as (requests, events)."""
    return [
        float(sum(n for n, _ in buckets)),
        float(sum(x for _, x in buckets)),
        float(sum(x * x for _, x in buckets)),
        float(sum(x * n for n, x in buckets)),
        float(sum(n * n for n, _ in buckets)),
    ]


@pytest.mark.parametrize(
    ("case", "buckets", "low", "high"),
    [
        # Σ(x − np)²/(p(1 − p)) − Σn over √(2 Σ n(n − 1)), p the cohort's own rate.
        ("identical buckets: under-dispersed", [(200, 6)] * 20, -math.inf, -3.0),
        ("two bursts of a fifth of the requests", [(200, 2)] * 18 + [(200, 40)] * 2, 50.0, math.inf),
        ("one lone error cannot be told from noise", [(2, 1)] + [(2, 0)] * 29, -1.0, 0.0),
        ("no events", [(100, 0)] * 10, 0.0, 0.0),
        ("every request an event", [(10, 10)] * 10, 0.0, 0.0),
        ("buckets of one request", [(1, 1), (1, 0)] * 5, 0.0, 0.0),
    ],
)  # fmt: skip
def test_dispersion_z(case: str, buckets: list[tuple[int, int]], low: float, high: float) -> None:
    """Tarone's statistic: far above 2 for bursts, at or below 0 for steady counts, 0 when undefined."""
    assert low <= dispersion_z(bucket_sums(buckets)) <= high, case


def test_dispersion_z_is_about_standard_normal_for_independent_requests() -> None:
    """Binomial buckets (60 × 10 requests at 3 %): the statistic exceeds 2 in a few percent of stages."""
    rng = random.Random(5)
    values = []
    for _ in range(2000):
        buckets = [(10, sum(rng.random() < 0.03 for _ in range(10))) for _ in range(30)]
        values.append(dispersion_z(bucket_sums(buckets)))
    above = sum(v > 2 for v in values) / len(values)
    assert 0.005 < above < 0.08
    assert abs(sum(values) / len(values)) < 0.2


@pytest.mark.parametrize(
    ("events", "theta0", "target", "low", "high"),
    [
        # 1:9 cohorts, ~30 events in the stage: the exact test realises far less than its level.
        (30.0, 0.1, 0.0064, 0.0105, 0.012),
        (6.0, 0.5, 0.0064, 0.02, 0.025),  # 1:1, 6 events: very discrete, up to the ceiling
        (600.0, 0.1, 0.0064, 0.0064, 0.008),  # many events: about the target
        (0.0, 0.5, 0.0064, 0.0064, 0.0064),  # nothing to calibrate on
        (30.0, 0.1, 0.03, 0.03, 0.03),  # a target above the ceiling stays the target
        (50_000.0, 0.1, 0.0064, 0.0064, 0.0064),  # past CALIBRATION_MAX_EVENTS: the target, no cost
    ],
)
def test_calibrated_level(events: float, theta0: float, target: float, low: float, high: float) -> None:
    """The level whose realised false-rejection rate at this traffic is the target, within the ceiling."""
    assert low <= calibrated_level(events, theta0, target, 0.025) <= high


def test_calibrated_level_realises_its_target() -> None:
    """Over N ~ Poisson(30) events at θ0 = 0.1, the exact test at the calibrated level rejects with
    probability at most the target, and a slightly larger level would exceed it."""

    def size(level: float) -> float:
        total = 0.0
        for n in range(1, 90):
            weight = math.exp(n * math.log(30) - 30 - math.lgamma(n + 1))
            tails = [t for t in binomial_upper_tails(n, 0.1, 0.025) if t <= level]
            total += weight * (max(tails) if tails else 0.0)
        return total

    level = calibrated_level(30.0, 0.1, 0.0064, 0.025)
    assert size(level) <= 0.0064 < size(level * 1.05)
    assert binomial_upper_tails(4, 0.5, 0.4) == pytest.approx([1 / 16, 5 / 16])


@pytest.mark.parametrize(
    ("n", "theta0", "level", "expected"),
    [
        (4, 0.5, 0.1, 1 / 16),  # x = 4 is the only count that unlikely
        (4, 0.5, 1 / 16, 1 / 16),  # a level exactly at a size attains it
        (4, 0.5, 0.06, 0.0),  # below the smallest size: the test can never reject
        (21, 0.5, 0.0064, binomial_tail(21, 17, 0.5)),  # 17 of 21: 0.36 %; 16 of 21 would be 1.3 %
        (0, 0.5, 0.1, 0.0),  # no events
        (5, 0.0, 0.1, 0.0),  # no room for the canary's share
    ],
)
def test_attained_size(n: int, theta0: float, level: float, expected: float) -> None:
    """The size an exact one-sided binomial test really has at a level: the largest tail not above it."""
    assert attained_size(n, theta0, level) == pytest.approx(expected)


def _brute_force_rate(events: float, theta0: float, target: float, ceiling: float) -> float:
    """The same rate by scanning each N's critical count with binomial_tail (an independent route; the
    judge's rounding allowance, as the level is one of the sizes summed in another order)."""
    total = 0.0
    for n in range(1, int(events * 4 + 40)):
        level = calibrated_level(n, theta0, target, ceiling) * (1 + 1e-9)
        critical = next(c for c in range(n + 2) if binomial_tail(n, c, theta0) <= level)
        weight = math.exp(n * math.log(events) - events - math.lgamma(n + 1))
        total += weight * binomial_tail(n, critical, theta0)
    return total


@pytest.mark.parametrize(
    ("events", "theta0", "low", "high"),
    [
        # The bench's clean A/A cells (stable errors 1 %, 30 minutes): 1:1 at 2 / 10 / 50 req/min, 1:9 at
        # 2 / 10 / 50; at a target of 0.64 % (the judge's default before 0.0085; test_judge_sequential checks 0.68 %).
        (1.2, 0.5, 0.0, 0.0001),
        (6.0, 0.5, 0.002, 0.0064),
        (30.0, 0.5, 0.0055, 0.0064),
        (6.0, 0.1, 0.004, 0.0064),
        (30.0, 0.1, 0.0055, 0.0064),
        (150.0, 0.1, 0.006, 0.0064),
    ],
)
def test_exact_look_false_rollback_rate(events: float, theta0: float, low: float, high: float) -> None:
    """The stage-end exact test, each stage at the level calibrated on its own total, rolls back an
    identical canary at most its target of the time at every traffic (and close to it from ~30 events)."""
    rate = exact_look_false_rollback_rate(events, theta0, 0.0064, 0.0128)
    assert low <= rate <= high
    if events <= 30:  # the independent route costs a calibration per N up to 4 × the mean
        assert rate == pytest.approx(_brute_force_rate(events, theta0, 0.0064, 0.0128), rel=1e-6, abs=1e-12)


def test_exact_look_false_rollback_rate_calibration_matters() -> None:
    """Without the calibration (ceiling = target) the same test realises far less than its target at a few
    events; nothing to compare, nothing rolled back."""
    assert exact_look_false_rollback_rate(6.0, 0.5, 0.0064, 0.0064) < 0.001
    assert exact_look_false_rollback_rate(6.0, 0.5, 0.0064, 0.0128) > 0.002
    assert exact_look_false_rollback_rate(0.0, 0.5, 0.0064, 0.0128) == 0.0
    assert exact_look_false_rollback_rate(30.0, 1.0, 0.0064, 0.0128) == 0.0


@pytest.mark.parametrize(
    ("n", "c", "theta", "expected"),
    [(4, 4, 0.5, 1 / 16), (4, 3, 0.5, 5 / 16), (4, 0, 0.5, 1.0), (0, 1, 0.5, 0.0), (10, 11, 0.3, 0.0)],
)
def test_binomial_tail(n: int, c: int, theta: float, expected: float) -> None:
    """P(Binomial(n, θ) ≥ c), the exact look's p-value."""
    assert binomial_tail(n, c, theta) == pytest.approx(expected)
