"""The threshold judge: is the canary worse than the stable cohort, and can we tell yet?

Three checks, each with its own verdict:

- health: `max_failed_health_checks` consecutive failed health checks of canary instances fail the canary,
  whatever the traffic (a dead canary gets no traffic to judge).
- error_rate: fails when the canary's error rate exceeds the comparison's by more than
  `error_rate_threshold` percentage points.
- latency_p95: fails when the canary's p95 exceeds the comparison's by more than `latency_threshold` percent
  *and* by more than `latency_min_difference_ms` (a 2 ms → 4 ms change is +100 % and means nothing).

The comparison is the stable cohort's traffic in the same window when it has `min_requests`, else the stable
traffic accumulated over the whole deployment (at a 100 % stage the stable cohort gets nothing). With fewer
than `min_requests` on either side the traffic checks are inconclusive: never promote blind, never roll back
on noise. Overall: any failure fails; else anything inconclusive is inconclusive; else pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

from canaryd.domain.config import CanaryConfig
from canaryd.domain.types import CohortStats

Figures = dict[str, float | int | None]


class Outcome(StrEnum):
    PASS = "pass"  # noqa: S105 - an outcome, not a password
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class MetricVerdict:
    """The verdict on one metric, with the figures it was based on."""

    metric: str
    outcome: Outcome
    reason: str
    figures: Figures = field(default_factory=dict)

    def snapshot(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "figures": self.figures,
        }


@dataclass(frozen=True)
class Verdict:
    """The overall verdict, every metric's verdict, and the reasons worth showing to a person."""

    outcome: Outcome
    metrics: tuple[MetricVerdict, ...]
    reasons: tuple[str, ...]
    compared_with: str = "stable"  # "stable" (this window) or "baseline" (stable over the whole deployment)

    def snapshot(self) -> dict[str, object]:
        """JSON-able evidence, stored with the event that this verdict caused."""
        return {
            "outcome": self.outcome.value,
            "compared_with": self.compared_with,
            "reasons": list(self.reasons),
            "metrics": [m.snapshot() for m in self.metrics],
        }

    def metric(self, name: str) -> MetricVerdict:
        for m in self.metrics:
            if m.metric == name:
                return m
        raise KeyError(name)


def _pct(rate: Fraction | float) -> str:
    return f"{float(rate) * 100:.1f} %"


def _health(failures: int, limit: int) -> MetricVerdict:
    figures: Figures = {"consecutive_failures": failures, "limit": limit}
    if failures >= limit:
        reason = f"health: {failures} consecutive failed health checks of canary instances"
        return MetricVerdict("health", Outcome.FAIL, reason, figures)
    return MetricVerdict("health", Outcome.PASS, f"health: {failures} of {limit} allowed failures", figures)


def _error_rate(canary: CohortStats, stable: CohortStats, label: str, threshold_pp: float) -> MetricVerdict:
    # Exact arithmetic: a difference of exactly the threshold is not "more than" it.
    c_rate = Fraction(canary.errors, canary.requests)
    s_rate = Fraction(stable.errors, stable.requests)
    diff = c_rate - s_rate
    limit = Fraction(str(threshold_pp)) / 100
    figures: Figures = {
        "canary_error_rate": round(float(c_rate), 5),
        "stable_error_rate": round(float(s_rate), 5),
        "difference_pp": round(float(diff) * 100, 3),
        "limit_pp": threshold_pp,
    }
    reason = (
        f"error_rate: canary {_pct(c_rate)} vs {label} {_pct(s_rate)} "
        f"({float(diff) * 100:+.1f} pp, limit +{threshold_pp:.1f} pp)"
    )
    return MetricVerdict("error_rate", Outcome.FAIL if diff > limit else Outcome.PASS, reason, figures)


def _latency(
    canary: CohortStats, stable: CohortStats, label: str, threshold_pct: float, min_difference_ms: float
) -> MetricVerdict:
    c_p95, s_p95 = canary.quantile_ms(0.95), stable.quantile_ms(0.95)
    figures: Figures = {
        "canary_p95_ms": c_p95,
        "stable_p95_ms": s_p95,
        "limit_percent": threshold_pct,
        "min_difference_ms": min_difference_ms,
    }
    if c_p95 is None or s_p95 is None:
        missing = "canary" if c_p95 is None else label
        return MetricVerdict(
            "latency_p95", Outcome.INCONCLUSIVE, f"latency_p95: no latency data for {missing}", figures
        )
    diff_ms = c_p95 - s_p95
    figures["difference_ms"] = round(diff_ms, 3)
    relative = f", {diff_ms / s_p95 * 100:+.0f} %" if s_p95 > 0 else ""
    reason = (
        f"latency_p95: canary {c_p95:.1f} ms vs {label} {s_p95:.1f} ms ({diff_ms:+.1f} ms{relative}; "
        f"limit +{threshold_pct:g} % and more than {min_difference_ms:g} ms)"
    )
    worse = c_p95 > s_p95 * (1 + threshold_pct / 100) and diff_ms > min_difference_ms
    return MetricVerdict("latency_p95", Outcome.FAIL if worse else Outcome.PASS, reason, figures)


def judge_threshold(
    canary: CohortStats,
    stable: CohortStats,
    baseline: CohortStats,
    health_failures: int,
    config: CanaryConfig,
) -> Verdict:
    """Compares the canary with stable traffic (or the whole-deployment `baseline`) against the thresholds."""
    need = config.min_requests
    health = _health(health_failures, config.max_failed_health_checks)
    use_stable = stable.requests >= need
    comparison = stable if use_stable else baseline
    label = "stable" if use_stable else "stable baseline"

    waiting: list[str] = []
    if canary.requests < need:
        waiting.append(f"canary has {canary.requests} of the {need} requests needed")
    if comparison.requests < need:
        waiting.append(
            f"stable has {stable.requests} of the {need} requests needed "
            f"(and {baseline.requests} over the whole deployment)"
        )

    metrics: list[MetricVerdict]
    if waiting:
        why = "; ".join(waiting)
        metrics = [
            health,
            MetricVerdict(
                "error_rate", Outcome.INCONCLUSIVE, f"error_rate: {why}", {"canary_requests": canary.requests}
            ),
            MetricVerdict(
                "latency_p95",
                Outcome.INCONCLUSIVE,
                f"latency_p95: {why}",
                {"canary_requests": canary.requests},
            ),
        ]
    else:
        metrics = [
            health,
            _error_rate(canary, comparison, label, config.error_rate_threshold),
            _latency(canary, comparison, label, config.latency_threshold, config.latency_min_difference_ms),
        ]

    failed = [m.reason for m in metrics if m.outcome is Outcome.FAIL]
    if failed:
        outcome, reasons = Outcome.FAIL, tuple(failed)
    elif waiting:
        outcome, reasons = Outcome.INCONCLUSIVE, tuple(waiting)
    elif any(m.outcome is Outcome.INCONCLUSIVE for m in metrics):
        outcome = Outcome.INCONCLUSIVE
        reasons = tuple(m.reason for m in metrics if m.outcome is Outcome.INCONCLUSIVE)
    else:
        outcome = Outcome.PASS
        reasons = (_summary(canary, comparison, label),)
    return Verdict(outcome, tuple(metrics), reasons, "stable" if use_stable else "baseline")


def _summary(canary: CohortStats, comparison: CohortStats, label: str) -> str:
    def ms(value: float | None) -> str:
        return "?" if value is None else f"{value:.1f} ms"

    c_rate, s_rate = canary.error_rate or 0.0, comparison.error_rate or 0.0
    return (
        f"canary within limits against {label}: error rate {_pct(c_rate)} vs {_pct(s_rate)}, "
        f"p95 {ms(canary.quantile_ms(0.95))} vs {ms(comparison.quantile_ms(0.95))} "
        f"({canary.requests} and {comparison.requests} requests)"
    )


__all__ = ["MetricVerdict", "Outcome", "Verdict", "judge_threshold"]
