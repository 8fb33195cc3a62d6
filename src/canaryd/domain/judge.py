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

The sequential judge (`judge_sequential`, the default; docs/judge.md) asks the same question with counts
and an always-valid test, so that it may look after every health check without rolling back healthy
canaries by chance:

- guards, outside the statistics: `max_failed_health_checks` consecutive failed health checks; no data
  (the canary got none of the requests its share says it should have had); and, when configured, the SLO
  ceilings (`error_rate_ceiling`, `latency_ceiling_ms`), tested on the canary alone.
- error_rate: the canary's and stable's errors counted in time buckets (`bucket_seconds`), each bucket's
  split of errors compared with the split of its requests (θ0 from the canary's share and
  `error_rate_margin`) by a mixture of likelihood ratios (domain/sequential.py, "time buckets"), each
  bucket's part divided by its design effect (the cohorts' estimated over-dispersion) and capped at
  `bucket_max_evidence`, so that a burst on one server cannot roll back alone. It fails when the evidence,
  multiplied over the stages so far, reaches 1/α (α = `alpha` shared by the tests, weighted Bonferroni:
  errors 4 parts, every other test 1); or, once per stage when its planned duration is over, when the
  stage-end look (an exact bucket-wise conditional test at `stage_end_alpha`) rejects.
- latency_tail: the same tests on the requests slower than a threshold: `latency_tail_ms`, or stable's p95
  over the whole deployment plus `latency_min_difference_ms`.
- It passes a metric only with evidence: enough requests (summed over the stages) that a regression of
  `detect_ratio` × (and at least `detect_min_increase` points) would have been detected with `power`.
  Until then the metric is inconclusive and says how many requests it is waiting for.
- cpu, memory: canary against stable means, with `cpu_tolerance` / `memory_tolerance` points. Lower
  weight: worse in most of a stage's checks holds the stage (inconclusive), never rolls back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fractions import Fraction
from typing import Protocol

from canaryd.domain.config import CanaryConfig
from canaryd.domain.sequential import (
    RATIOS,
    binomial_tail,
    bucket_log_lr,
    calibrated_level,
    common_correlation,
    convolve,
    counted_distribution,
    design_effect,
    dispersion_z,
    events_needed_mixture,
    excess_correlation,
    log_e_value,
    log_mixture,
    null_share,
    upper_tail,
)
from canaryd.domain.types import CohortStats, HostLoad

Figures = dict[str, float | int | str | None]


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


def _threshold_waiting(
    canary: CohortStats, stable: CohortStats, baseline: CohortStats, comparison: CohortStats, need: int
) -> list[str]:
    """What the traffic checks are still waiting for: each side short of `need` requests."""
    waiting: list[str] = []
    if canary.requests < need:
        waiting.append(f"canary has {canary.requests} of the {need} requests needed")
    if comparison.requests < need:
        waiting.append(
            f"stable has {stable.requests} of the {need} requests needed "
            f"(and {baseline.requests} over the whole deployment)"
        )
    return waiting


def _threshold_metrics(
    canary: CohortStats,
    comparison: CohortStats,
    label: str,
    health: MetricVerdict,
    waiting: list[str],
    config: CanaryConfig,
) -> list[MetricVerdict]:
    """The threshold judge's metric verdicts: health, then error rate and p95 (inconclusive while waiting)."""
    if waiting:
        why = "; ".join(waiting)
        return [
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
    return [
        health,
        _error_rate(canary, comparison, label, config.error_rate_threshold),
        _latency(canary, comparison, label, config.latency_threshold, config.latency_min_difference_ms),
    ]


def _threshold_outcome(
    metrics: list[MetricVerdict], waiting: list[str], canary: CohortStats, comparison: CohortStats, label: str
) -> tuple[Outcome, tuple[str, ...]]:
    """The threshold judge's overall outcome and reasons: any failure fails, then waiting, then pass."""
    failed = [m.reason for m in metrics if m.outcome is Outcome.FAIL]
    if failed:
        return Outcome.FAIL, tuple(failed)
    if waiting:
        return Outcome.INCONCLUSIVE, tuple(waiting)
    if any(m.outcome is Outcome.INCONCLUSIVE for m in metrics):
        return Outcome.INCONCLUSIVE, tuple(m.reason for m in metrics if m.outcome is Outcome.INCONCLUSIVE)
    return Outcome.PASS, (_summary(canary, comparison, label),)


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
    waiting = _threshold_waiting(canary, stable, baseline, comparison, need)
    metrics = _threshold_metrics(canary, comparison, label, health, waiting, config)
    outcome, reasons = _threshold_outcome(metrics, waiting, canary, comparison, label)
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


# --- the sequential judge ---------------------------------------------------------------------------------

#: The tests that compare canary with stable, in the order they are reported.
COMPARED = ("error_rate", "latency_tail")
#: Metrics whose failure rolls the canary back; cpu and memory only hold a stage.
CRITICAL = frozenset({"health", "no_data", "error_rate_slo", "latency_slo", *COMPARED})


@dataclass(frozen=True)
class Tally:
    """Events (errors, or slow requests) out of requests, for both cohorts."""

    canary_requests: int = 0
    canary_events: int = 0
    stable_requests: int = 0
    stable_events: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.canary_requests + other.canary_requests,
            self.canary_events + other.canary_events,
            self.stable_requests + other.stable_requests,
            self.stable_events + other.stable_events,
        )

    def __sub__(self, other: Tally) -> Tally:
        return Tally(
            self.canary_requests - other.canary_requests,
            self.canary_events - other.canary_events,
            self.stable_requests - other.stable_requests,
            self.stable_events - other.stable_events,
        )

    def to_json(self) -> list[int]:
        return [self.canary_requests, self.canary_events, self.stable_requests, self.stable_events]

    @classmethod
    def from_json(cls, raw: object) -> Tally:
        if isinstance(raw, list) and len(raw) == 4 and all(isinstance(v, int) for v in raw):
            return cls(*raw)
        return cls()


_ZEROS5 = (0.0, 0.0, 0.0, 0.0, 0.0)
_ZEROS4 = (0.0, 0.0, 0.0, 0.0)
Histogram = Mapping[int, int]


def _hists(raw: object) -> tuple[Histogram, Histogram]:
    if not isinstance(raw, list) or len(raw) != 2:
        return ({}, {})
    out: list[dict[int, int]] = []
    for h in raw:
        pairs = h if isinstance(h, list) else []
        ok = [p for p in pairs if isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p)]
        out.append({b: n for b, n in ok})
    return out[0], out[1]


def _minus(hist: Histogram, base: Histogram) -> dict[int, int]:
    return {b: n - base.get(b, 0) for b, n in hist.items() if n - base.get(b, 0) > 0}


def _floats(raw: object, size: int | None = None) -> tuple[float, ...] | None:
    if not isinstance(raw, list) or (size is not None and len(raw) != size):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        return None
    return tuple(float(v) for v in raw)


@dataclass(frozen=True)
class Stream:
    """One comparison's time-bucket state (domain/sequential.py, "time buckets"), carried as JSON.

    `log_lr` sums each closed bucket's tempered, capped log likelihood ratio per alternative over the whole
    rollout; `pending` is the open bucket's as of the last check. `base` is the stage's cumulative tally at
    the last bucket boundary (the open bucket is the difference). The sums estimate each cohort's
    over-dispersion; `counted` and `end_null` serve the stage-end look.
    """

    log_lr: tuple[float, ...] = ()
    pending: tuple[float, ...] = ()
    stage_start: float = 0.0  # log e-value when the stage began
    base: Tally = field(default_factory=Tally)
    checks: int = 0  # checks since the last bucket boundary
    stage_checks: int = 0
    buckets: int = 0  # closed buckets in this stage
    capped: int = 0  # of which at bucket_max_evidence
    canary_sums: tuple[float, ...] = _ZEROS5  # Σn, Σx, Σx², Σx·n, Σn² over the rollout's buckets
    stable_sums: tuple[float, ...] = _ZEROS5
    #: Σ n_c n_s, Σ x_c x_s, Σ x_c n_s, Σ n_c x_s over the rollout's buckets where both cohorts had requests:
    #: the cohorts' common over-dispersion (bursts that hit both at once), `common_correlation`
    cross_sums: tuple[float, ...] = _ZEROS4
    counted: tuple[float, ...] = _ZEROS4  # canary counted events, requests; stable events, requests
    end_null: tuple[float, ...] = (1.0,)  # distribution of the stage's counted canary events under the null
    end_offset: int = 0  # ... of end_offset, end_offset + 1, ...
    end_counted: int = 0
    #: the same look without caps (when neither cohort's buckets show over-dispersion): the stage's canary
    #: events in the compared buckets
    free_counted: int = 0
    end_p: float | None = None  # the stage-end look's p-value, once it happened
    #: the capped test's p-value (no design-effect shrink) when the exact test ran on buckets too small to
    #: show bursts (GATE_VISIBLE_REQUESTS): the exact look rolls back only if it is at the level too
    end_p_capped: float | None = None
    end_test: str = ""  # which test the look used (END_TESTS), once it happened
    end_level: float | None = None  # ... and at what level
    #: latency only: both cohorts' histograms at the last bucket boundary (a bucket's slow requests are
    #: counted on its own histogram against the threshold of the check that closes it).
    base_hists: tuple[Histogram, Histogram] = ({}, {})

    def to_json(self) -> dict[str, object]:
        return {
            "log_lr": list(self.log_lr),
            "pending": list(self.pending),
            "stage_start": self.stage_start,
            "base": self.base.to_json(),
            "checks": self.checks,
            "stage_checks": self.stage_checks,
            "buckets": self.buckets,
            "capped": self.capped,
            "canary_sums": list(self.canary_sums),
            "stable_sums": list(self.stable_sums),
            "cross_sums": list(self.cross_sums),
            "counted": list(self.counted),
            "end_null": [float(f"{p:.12g}") for p in self.end_null],
            "end_offset": self.end_offset,
            "end_counted": self.end_counted,
            "free_counted": self.free_counted,
            "end_p": self.end_p,
            "end_p_capped": self.end_p_capped,
            "end_test": self.end_test,
            "end_level": self.end_level,
            "base_hists": [sorted(h.items()) for h in self.base_hists],
        }

    @classmethod
    def from_json(cls, raw: object) -> Stream | None:
        if not isinstance(raw, dict):
            return None

        def integer(key: str) -> int:
            v = raw.get(key, 0)
            return v if isinstance(v, int) and not isinstance(v, bool) else 0

        log_lr = _floats(raw.get("log_lr"), len(RATIOS))
        end_null = _floats(raw.get("end_null"))
        end_test = raw.get("end_test")

        def number(key: str) -> float | None:
            v = raw.get(key)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        stage_start = raw.get("stage_start", 0.0)
        return cls(
            log_lr=log_lr or (),
            pending=_floats(raw.get("pending"), len(RATIOS)) or (),
            stage_start=float(stage_start) if isinstance(stage_start, (int, float)) else 0.0,
            base=Tally.from_json(raw.get("base")),
            checks=integer("checks"),
            stage_checks=integer("stage_checks"),
            buckets=integer("buckets"),
            capped=integer("capped"),
            canary_sums=_floats(raw.get("canary_sums"), 5) or _ZEROS5,
            stable_sums=_floats(raw.get("stable_sums"), 5) or _ZEROS5,
            cross_sums=_floats(raw.get("cross_sums"), 4) or _ZEROS4,
            counted=_floats(raw.get("counted"), 4) or _ZEROS4,
            end_null=end_null if end_null else (1.0,),
            end_offset=integer("end_offset") if end_null else 0,
            end_counted=integer("end_counted"),
            free_counted=integer("free_counted"),
            end_p=number("end_p"),
            end_p_capped=number("end_p_capped"),
            end_test=end_test if end_test in END_TESTS else "",
            end_level=number("end_level"),
            base_hists=_hists(raw.get("base_hists")),
        )

    def next_stage(self) -> Stream:
        """The stream at a new stage: the open bucket folded in, stage-scoped state reset."""
        log_lr = tuple(a + b for a, b in zip(self.log_lr, self.pending, strict=False)) or self.log_lr
        return Stream(
            log_lr=log_lr,
            stage_start=log_mixture(log_lr) if log_lr else 0.0,
            canary_sums=self.canary_sums,
            stable_sums=self.stable_sums,
            cross_sums=self.cross_sums,
            counted=self.counted,
        )


def _add_sums(sums: tuple[float, ...], n: int, x: int) -> tuple[float, ...]:
    return (sums[0] + n, sums[1] + x, sums[2] + x * x, sums[3] + x * n, sums[4] + n * n)


def _add_cross(sums: tuple[float, ...], delta: Tally) -> tuple[float, ...]:
    nc, x, ns, y = delta.canary_requests, delta.canary_events, delta.stable_requests, delta.stable_events
    return (sums[0] + nc * ns, sums[1] + x * y, sums[2] + x * ns, sums[3] + nc * y)


def _compared(tally: Tally) -> Tally:
    """The tally if both cohorts had traffic, else nothing (it compared nothing)."""
    return tally if tally.canary_requests and tally.stable_requests else Tally()


@dataclass(frozen=True)
class Evidence:
    """What the sequential judge carries from check to check and from stage to stage (stored as JSON).

    `carried` and `prior` hold the finished stages (log e-values and tallies); `current` and `latest`
    the stage in progress as of the last check. When the stage changes (by the engine or by an operator),
    `at_stage` folds the last check of the old stage into the carried evidence.
    """

    stage: int = 0
    carried: Mapping[str, float] = field(default_factory=dict)
    prior: Mapping[str, Tally] = field(default_factory=dict)
    current: Mapping[str, float] = field(default_factory=dict)
    latest: Mapping[str, Tally] = field(default_factory=dict)
    host_checks: int = 0
    cpu_worse: int = 0
    memory_worse: int = 0
    source_failures: int = 0
    streams: Mapping[str, Stream] = field(default_factory=dict)

    def at_stage(self, stage: int) -> Evidence:
        if stage == self.stage:
            return self
        carried = {m: self.carried.get(m, 0.0) + self.current.get(m, 0.0) for m in COMPARED}
        prior = {m: self.prior.get(m, Tally()) + _compared(self.latest.get(m, Tally())) for m in COMPARED}
        streams = {m: st.next_stage() for m, st in self.streams.items()}
        return Evidence(stage, carried, prior, source_failures=self.source_failures, streams=streams)

    def to_json(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "carried": dict(self.carried),
            "prior": {m: t.to_json() for m, t in self.prior.items()},
            "current": dict(self.current),
            "latest": {m: t.to_json() for m, t in self.latest.items()},
            "host_checks": self.host_checks,
            "cpu_worse": self.cpu_worse,
            "memory_worse": self.memory_worse,
            "source_failures": self.source_failures,
            "streams": {m: st.to_json() for m, st in self.streams.items()},
        }

    @classmethod
    def from_json(cls, raw: object) -> Evidence:
        if not isinstance(raw, dict):
            return cls()

        def floats(key: str) -> dict[str, float]:
            d = raw.get(key)
            return {str(k): float(v) for k, v in d.items()} if isinstance(d, dict) else {}

        def tallies(key: str) -> dict[str, Tally]:
            d = raw.get(key)
            return {str(k): Tally.from_json(v) for k, v in d.items()} if isinstance(d, dict) else {}

        def integer(key: str) -> int:
            v = raw.get(key, 0)
            return v if isinstance(v, int) else 0

        def streams() -> dict[str, Stream]:
            d = raw.get("streams")  # absent in evidence written before the time buckets
            if not isinstance(d, dict):
                return {}
            parsed = {str(k): Stream.from_json(v) for k, v in d.items()}
            return {k: v for k, v in parsed.items() if v is not None}

        return cls(
            integer("stage"),
            floats("carried"),
            tallies("prior"),
            floats("current"),
            tallies("latest"),
            integer("host_checks"),
            integer("cpu_worse"),
            integer("memory_worse"),
            integer("source_failures"),
            streams(),
        )


@dataclass(frozen=True)
class Observation:
    """One health check's view: this stage's traffic per cohort, stable over the whole deployment, health,
    the canary's configured share of requests (0-1, None if unknown) and each cohort's host loads."""

    canary: CohortStats
    stable: CohortStats
    baseline: CohortStats
    health_failures: int = 0
    canary_share: float | None = None
    canary_load: Sequence[HostLoad] = ()
    stable_load: Sequence[HostLoad] = ()
    stage: int = 0
    evidence: Evidence = field(default_factory=Evidence)


@dataclass(frozen=True)
class Judgement:
    """A verdict and the evidence to carry to the next check."""

    verdict: Verdict
    evidence: Evidence


#: Shares of `alpha` (weighted Bonferroni): errors are the clearest signal and get most of the budget.
ALPHA_WEIGHTS = {"error_rate": 4.0, "latency_tail": 1.0, "error_rate_slo": 1.0, "latency_slo": 1.0}


def alpha_shares(config: CanaryConfig) -> dict[str, float]:
    """Each statistical test's part of `alpha`; the parts add up to `alpha` (weighted Bonferroni)."""
    tests = ["error_rate", "latency_tail"]
    if config.error_rate_ceiling is not None:
        tests.append("error_rate_slo")
    if config.latency_ceiling_ms is not None:
        tests.append("latency_slo")
    total = sum(ALPHA_WEIGHTS[t] for t in tests)
    return {t: config.alpha * ALPHA_WEIGHTS[t] / total for t in tests}


def _e(log_e: float) -> str:
    value = math.exp(min(log_e, 700.0))
    return f"{value:.3g}" if value < 1e4 else f"{value:.1e}"


def _rate(events: int, requests: int) -> str:
    return f"{events}/{requests}" + (f" ({events / requests * 100:.1f} %)" if requests else "")


def _no_data(canary: CohortStats, stable: CohortStats, share: float | None, alpha: float) -> MetricVerdict:
    """Fails when the canary got no request although its share makes that all but impossible."""
    figures: Figures = {
        "canary_requests": canary.requests,
        "stable_requests": stable.requests,
        "share": share,
    }
    if canary.requests > 0:
        return MetricVerdict("no_data", Outcome.PASS, "no_data: the canary is receiving traffic", figures)
    if stable.requests == 0:
        # Nothing reached either cohort: say so rather than "receiving traffic"; the comparisons wait.
        why = "no_data: no request reached canary or stable yet; the judge needs traffic through the proxy"
        return MetricVerdict("no_data", Outcome.PASS, why, figures)
    if share is None or not 0 < share < 1:
        return MetricVerdict(
            "no_data", Outcome.PASS, "no_data: no canary traffic expected at this share", figures
        )
    expected = stable.requests * share / (1 - share)
    figures["expected_canary_requests"] = round(expected, 1)
    # With a share s, P(no canary request among these) = (1 - s)^n; a guard must (almost) never fire on a
    # healthy canary, so it asks for a hundred times the tests' level.
    if stable.requests * math.log1p(-share) <= math.log(alpha / 100):
        reason = (
            f"no_data: the canary received none of the ~{expected:.0f} requests expected at "
            f"{share * 100:g} % of traffic (stable had {stable.requests}); is it serving?"
        )
        return MetricVerdict("no_data", Outcome.FAIL, reason, figures)
    return MetricVerdict(
        "no_data", Outcome.PASS, "no_data: too few requests yet to miss the canary's", figures
    )


def _ceiling(
    metric: str,
    what: str,
    events: int,
    requests: int,
    ceiling: float,
    limit_text: str,
    alpha: float,
    k: float,
) -> MetricVerdict:
    """One-sample always-valid test: is the canary's share of `events` above `ceiling` (0-1)?"""
    log_e = log_e_value(events, requests - events, ceiling, k)
    threshold = math.log(1 / alpha)
    figures: Figures = {
        "canary_requests": requests,
        f"canary_{what}": events,
        "ceiling": ceiling,
        "e_value": round(math.exp(min(log_e, 700.0)), 4),
        "e_threshold": round(1 / alpha, 2),
    }
    text = f"{metric}: canary {what} {_rate(events, requests)} against the {limit_text}"
    if requests and events / requests > ceiling and log_e >= threshold:
        return MetricVerdict(metric, Outcome.FAIL, f"{text} (e={_e(log_e)} ≥ {1 / alpha:g})", figures)
    return MetricVerdict(metric, Outcome.PASS, f"{text}: not shown to be above it", figures)


def _detect_text(config: CanaryConfig, ratio_wins: bool, what: str) -> str:
    if ratio_wins:
        return f"×{config.detect_ratio:g} {what}"
    return f"+{config.detect_min_increase:g} pp {what}"


def stage_end_alpha_shares(config: CanaryConfig) -> dict[str, tuple[float, float]]:
    """Each comparison's part of the stage-end look's levels (the same weights as alpha's): of
    `stage_end_alpha` (the capped test) and of `stage_end_alpha_independent` (the exact test)."""
    total = sum(ALPHA_WEIGHTS[t] for t in COMPARED)
    return {
        t: (
            config.stage_end_alpha * ALPHA_WEIGHTS[t] / total,
            config.stage_end_alpha_independent * ALPHA_WEIGHTS[t] / total,
        )
        for t in COMPARED
    }


#: The stage-end look's two tests: the exact test of every canary event (no over-dispersion seen), and
#: the capped test (a burst counts like one or two events; the excess shrunk by the design effect).
EXACT, CAPPED = "exact", "capped"
END_TESTS = (EXACT, CAPPED)
#: Tarone's dispersion statistic above which a cohort's buckets count as over-dispersed. About N(0, 1)
#: for independent requests (above 3 in ~1 % of 30-bucket stages, so the exact test is nearly always
#: used there); one burst of a fifth of a bucket's requests failing drives it far above, except at a few
#: requests a minute where a burst is one or two errors (docs/judge.md, "The stage-end look").
DISPERSION_GATE = 3.0
#: ... and the exact test needs this many canary requests per bucket on average: in smaller buckets a
#: burst is one or two errors, which no dispersion test can tell from independent ones (at 2 requests
#: a minute it saw 8 % of the bursts the bench simulates).
GATE_MIN_REQUESTS = 5.0
#: Below this many canary requests per bucket on average a burst is a few errors, which the dispersion
#: gate sees only in part (1:1 at 10 requests a minute: in ~half of the bursty stages). At 50 requests a
#: minute a 20 % burst is ~10 errors against 0.5 expected: the gate sees it.
GATE_VISIBLE_REQUESTS = 20.0
#: ... there a burst moves the canary's Tarone z only to 1-3, below the gate. Where it is above this (a
#: sign of clustering the gate cannot confirm; ~10 % of stages of independent requests at 10 a minute),
#: the exact test rolls back only if the capped test — each bucket's events counted up to its allowance
#: — rejects at the same level too: the canary's excess must not rest on a few bursty buckets.
BLIND_DISPERSION_GATE = 1.0


@dataclass(frozen=True)
class _Bucket:
    """One time bucket's contribution: per-alternative log likelihood ratios and what went into them."""

    log_lr: tuple[float, ...]
    capped: bool
    canary_sums: tuple[float, ...]
    stable_sums: tuple[float, ...]
    r_canary: float
    r_stable: float
    design_effect: float
    cross_sums: tuple[float, ...]
    r_common: float


def _dispersions(
    canary_sums: tuple[float, ...], stable_sums: tuple[float, ...], cross_sums: tuple[float, ...]
) -> tuple[float, float, float]:
    """Each cohort's over-dispersion r̂_c, r̂_s and their common part r̂_x."""
    r_c, r_s = excess_correlation(canary_sums), excess_correlation(stable_sums)
    return r_c, r_s, common_correlation(canary_sums, stable_sums, cross_sums, r_c, r_s)


def _bucket(
    stream: Stream, delta: Tally, margin: float, config: CanaryConfig, compares: bool = True
) -> _Bucket:
    """Tempered, capped log likelihood ratios of one bucket (nothing if a cohort had no traffic in it)."""
    nc, x, ns, y = delta.canary_requests, delta.canary_events, delta.stable_requests, delta.stable_events
    zero = (0.0,) * len(RATIOS)
    if min(nc, ns, x, y) < 0:
        r_c, r_s, r_x = _dispersions(stream.canary_sums, stream.stable_sums, stream.cross_sums)
        return _Bucket(
            zero, False, stream.canary_sums, stream.stable_sums, r_c, r_s, 1.0, stream.cross_sums, r_x
        )
    # In a stage that compares, a cohort's bucket tells its over-dispersion even when the other cohort had
    # no request in it (a stable burst in a minute without canary requests still shows bursts). A stage
    # that compares nothing (100 %) adds nothing: its buckets would inflate the design effect of a pass.
    lone = compares or (nc > 0 and ns > 0)
    canary_sums = _add_sums(stream.canary_sums, nc, x) if nc > 0 and lone else stream.canary_sums
    stable_sums = _add_sums(stream.stable_sums, ns, y) if ns > 0 and lone else stream.stable_sums
    cross_sums = _add_cross(stream.cross_sums, delta) if nc > 0 and ns > 0 else stream.cross_sums
    r_c, r_s, r_x = _dispersions(canary_sums, stable_sums, cross_sums)
    if nc == 0 or ns == 0:
        return _Bucket(zero, False, canary_sums, stable_sums, r_c, r_s, 1.0, cross_sums, r_x)
    theta0 = null_share(nc / (nc + ns), margin)
    phi = design_effect(r_c, r_s, nc, ns, theta0, r_x)
    cap = math.log(config.bucket_max_evidence)
    raw = [v / phi for v in bucket_log_lr(x, y, theta0)]
    capped = tuple(min(v, cap) for v in raw)
    return _Bucket(
        capped, any(v > cap for v in raw), canary_sums, stable_sums, r_c, r_s, phi, cross_sums, r_x
    )


def _counted_caps(stream: Stream, delta: Tally, kappa: float) -> list[int]:
    """For y = 0..e stable events in the bucket: the most canary events the stage-end look counts."""
    nc, ns = delta.canary_requests, delta.stable_requests
    events = delta.canary_events + delta.stable_events
    c_events, c_requests, s_events, s_requests = stream.counted
    p_canary = c_events / c_requests if c_requests else 0.0
    caps = []
    for y in range(events + 1):
        p_stable = (s_events + y) / (s_requests + ns) if s_requests + ns else 0.0
        mu = nc * max(p_canary, p_stable)
        caps.append(max(1, math.ceil(mu + kappa * math.sqrt(mu))))
    return caps


def _close_for_end_look(stream: Stream, delta: Tally, margin: float, config: CanaryConfig) -> Stream:
    """Adds a closed bucket to the stage-end look: its counted canary events and their null distribution."""
    nc, x, ns, y = delta.canary_requests, delta.canary_events, delta.stable_requests, delta.stable_events
    if nc <= 0 or ns <= 0 or x < 0 or y < 0:
        return stream
    caps = _counted_caps(stream, delta, config.burst_allowance)
    counted = min(x, caps[y])
    theta0 = null_share(nc / (nc + ns), margin)
    offset, null = convolve(
        (stream.end_offset, list(stream.end_null)), counted_distribution(x + y, theta0, caps)
    )
    c = stream.counted
    return replace(
        stream,
        end_null=tuple(null),
        end_offset=offset,
        end_counted=stream.end_counted + counted,
        free_counted=stream.free_counted + x,
        counted=(c[0] + counted, c[1] + nc, c[2] + y, c[3] + ns),
    )


#: A stage holds at least this many buckets: shorter stages get shorter buckets (a stage shorter than
#: one bucket could never show persistence, and a bad canary would ride through it).
MIN_BUCKETS_PER_STAGE = 5


def checks_per_bucket(config: CanaryConfig) -> int:
    """Checks in one time bucket: `bucket_seconds`, at most a fifth of the stage, at least one check."""
    seconds = min(config.bucket_seconds, config.stage_duration / MIN_BUCKETS_PER_STAGE)
    return max(1, math.ceil(seconds / config.health_check_interval))


def _advance(
    stream: Stream,
    stage: Tally,
    margin: float,
    config: CanaryConfig,
    end_look: bool,
    latency: tuple[CohortStats, CohortStats, float] | None,
) -> tuple[Stream, _Bucket]:
    """One check: the open bucket's contribution; closes it when its time is up (or for the end look)."""
    delta = stage - stream.base
    hists: tuple[Histogram, Histogram] = ({}, {})
    if latency is not None:  # slow requests of the bucket's own histograms, at today's threshold
        canary, stable, threshold_ms = latency
        hists = (dict(canary.latency_buckets), dict(stable.latency_buckets))
        c_hist, s_hist = (_minus(h, b) for h, b in zip(hists, stream.base_hists, strict=True))
        delta = Tally(
            delta.canary_requests,
            CohortStats(0, 0, c_hist).slower_than(threshold_ms),
            delta.stable_requests,
            CohortStats(0, 0, s_hist).slower_than(threshold_ms),
        )
    if min(delta.canary_requests, delta.stable_requests, delta.canary_events, delta.stable_events) < 0:
        delta = stage  # the counts went backwards (a reset source): start the bucket afresh
    checks = stream.checks + 1
    per_bucket = checks_per_bucket(config)
    compares = stage.canary_requests > 0 and stage.stable_requests > 0
    bucket = _bucket(stream, delta, margin, config, compares)
    stream = replace(stream, stage_checks=stream.stage_checks + 1)
    if checks < per_bucket and not end_look:
        return replace(stream, checks=checks, pending=bucket.log_lr), bucket
    log_lr = tuple(a + b for a, b in zip(stream.log_lr, bucket.log_lr, strict=True))
    closed = replace(
        stream,
        log_lr=log_lr,
        pending=(),
        base=stage,
        checks=0,
        buckets=stream.buckets + (delta.canary_requests > 0 and delta.stable_requests > 0),
        capped=stream.capped + bucket.capped,
        canary_sums=bucket.canary_sums,
        stable_sums=bucket.stable_sums,
        cross_sums=bucket.cross_sums,
        base_hists=hists,
    )
    return _close_for_end_look(closed, delta, margin, config), bucket


def _typical_design_effect(stream: Stream, bucket: _Bucket, stage: Tally, margin: float) -> float:
    """The design effect of this stage's average bucket, at the latest over-dispersion estimates. A stage
    that compares nothing (100 %: no stable traffic) adds no evidence, so it is the compared buckets' so far
    (their size-weighted mean size): its own one-cohort buckets would make a pass need more than it has."""
    if stage.canary_requests and stage.stable_requests:
        buckets = max(stream.buckets, 1)
        n_canary, n_stable = stage.canary_requests / buckets, stage.stable_requests / buckets
    else:
        n_canary, n_stable = _mean_bucket_size(bucket.canary_sums), _mean_bucket_size(bucket.stable_sums)
    total = n_canary + n_stable
    rho = n_canary / total if total else 0.5
    return design_effect(
        bucket.r_canary, bucket.r_stable, round(n_canary), round(n_stable),
        null_share(rho, margin) if 0 < rho < 1 else 0.5, bucket.r_common,
    )  # fmt: skip


def _mean_bucket_size(sums: tuple[float, ...]) -> float:
    """Σn² / Σn of a cohort's buckets (`Stream.canary_sums`): their mean size, weighted by size."""
    return sums[4] / sums[0] if sums[0] > 0 else 0.0


def _per_bucket_canary_requests(stream: Stream) -> float:
    """The canary's requests per compared bucket of this stage, on average."""
    return stream.counted[1] / max(stream.buckets, 1)


def _needs_capped_agreement(stream: Stream, bucket: _Bucket) -> bool:
    """Whether the exact test needs the capped test's agreement: the canary's buckets are too small for
    the gate to see a burst, and its dispersion z shows a sign of one (BLIND_DISPERSION_GATE)."""
    return (
        _per_bucket_canary_requests(stream) < GATE_VISIBLE_REQUESTS
        and dispersion_z(bucket.canary_sums) > BLIND_DISPERSION_GATE
    )


def _end_test(stream: Stream, bucket: _Bucket) -> str:
    """Which test the stage-end look uses: the exact one unless a cohort's buckets are over-dispersed,
    or the canary's buckets are too small for a burst to show in them."""
    worst = max(dispersion_z(bucket.canary_sums), dispersion_z(bucket.stable_sums))
    per_bucket = _per_bucket_canary_requests(stream)
    return EXACT if worst <= DISPERSION_GATE and per_bucket >= GATE_MIN_REQUESTS else CAPPED


#: The exact look's level is one of the sizes the test can have, summed in another order than its p-value:
#: a p-value equal to it may come out a few units in the last place above it (x = 4 of 10 events at
#: θ0 = 0.1, both 1.28 %, was not rolled back), so it is compared with the level times this.
ROUNDING = 1.0 + 1e-9
#: The exact stage-end look's calibrated level is at most this many times its target: at a few events
#: the calibration would go far higher, and there bursts the gate cannot see (a few requests a bucket)
#: are what a high level lets through (1:1 cohorts at 10 requests a minute: 1.0 % of bursty A/A runs
#: rolled back with no ceiling below 0.025, 0.8 % with 0.0125).
LEVEL_CEILING = 2.0


def _exact_null(stream: Stream, margin: float) -> tuple[int, float]:
    """The exact look's null: the stage's events (compared buckets) and the canary's share θ0 of them."""
    _, c_requests, s_events, s_requests = stream.counted
    if c_requests <= 0 or s_requests <= 0:
        return 0, 0.0
    return stream.free_counted + int(s_events), null_share(c_requests / (c_requests + s_requests), margin)


def _exact_level(stream: Stream, margin: float, target: float) -> float:
    """The exact look's level: the one at which an identical canary with this stage's traffic (its
    events and split) is rolled back with probability `target` (domain/sequential.calibrated_level)."""
    events, theta0 = _exact_null(stream, margin)
    return calibrated_level(events, theta0, target, LEVEL_CEILING * target)


def _end_look(
    stream: Stream, bucket: _Bucket, stage: Tally, margin: float, levels: tuple[float, float]
) -> Stream:
    """The stage-end look: with independent-looking buckets the exact test of every canary event, at the
    level calibrated to the independent target; else the capped test, its excess shrunk by the design
    effect, at stage_end_alpha's share."""
    if _end_test(stream, bucket) == EXACT:
        events, theta0 = _exact_null(stream, margin)
        p = binomial_tail(events, stream.free_counted, theta0)
        # Where bursts can hide from the gate, the capped statistic (its exact null given each bucket's
        # total, no shrink) must agree: rolling back needs both p-values at the level.
        capped = upper_tail(stream.end_offset, stream.end_null, stream.end_counted)
        return replace(
            stream,
            end_p=p,
            end_p_capped=capped if _needs_capped_agreement(stream, bucket) else None,
            end_test=EXACT,
            end_level=_exact_level(stream, margin, levels[1]),
        )
    p = _end_p_value(stream, bucket, stage, margin)
    return replace(stream, end_p=p, end_test=CAPPED, end_level=levels[0])


def _end_p_value(stream: Stream, bucket: _Bucket, stage: Tally, margin: float) -> float:
    """The stage-end look's p-value: P(counted ≥ observed) under the null, the excess over the null's
    mean shrunk by √(design effect) when the cohorts' own buckets show over-dispersion."""
    mean = sum((stream.end_offset + i) * p for i, p in enumerate(stream.end_null))
    phi = _typical_design_effect(stream, bucket, stage, margin)
    observed = stream.end_counted
    if observed > mean and phi > 1:
        observed = math.ceil(mean + (observed - mean) / math.sqrt(phi))
    return upper_tail(stream.end_offset, stream.end_null, observed)


def _open_stream(metric: str, evidence: Evidence) -> Stream:
    """The metric's stream so far, or a fresh one carrying the e-value of evidence written before buckets."""
    stream = evidence.streams.get(metric)
    if stream is None:  # first check, or evidence written before time buckets: carry its e-value
        carried = evidence.carried.get(metric, 0.0)
        stream = Stream(log_lr=(carried,) * len(RATIOS), stage_start=carried)
    return stream


def _null_mean(stream: Stream) -> float:
    """The mean of the stage-end look's null distribution of counted canary events."""
    return sum((stream.end_offset + i) * p for i, p in enumerate(stream.end_null))


@dataclass(frozen=True)
class _EndView:
    """The stage-end look as a verdict reports it: its test (the one used, or the one the gate picks
    now), the canary events it counts, their expectation under the null, and its level."""

    test: str
    counted: int
    expected: float
    level: float
    target: float  # the false-rollback rate the level stands for


def _end_view(stream: Stream, bucket: _Bucket, margin: float, levels: tuple[float, float]) -> _EndView:
    """Before the look the exact test's level is its target (it is calibrated at the look)."""
    test = stream.end_test or _end_test(stream, bucket)
    if test == EXACT:
        events, theta0 = _exact_null(stream, margin)
        mean = events * theta0
        level = levels[1] if stream.end_level is None else stream.end_level
        return _EndView(EXACT, stream.free_counted, mean, level, levels[1])
    return _EndView(CAPPED, stream.end_counted, _null_mean(stream), levels[0], levels[0])


def _compare_figures(
    what: str,
    stage: Tally,
    stream: Stream,
    bucket: _Bucket,
    margin: float,
    alphas: tuple[float, float, float],
    log_e: float,
    total: Tally,
    config: CanaryConfig,
    extra: Figures,
) -> Figures:
    """The figures a comparison's verdict reports: counts, e-values, buckets, the stage-end look, power."""
    alpha = alphas[0]
    end = _end_view(stream, bucket, margin, alphas[1:])
    return {
        **extra,
        "canary_requests": stage.canary_requests,
        f"canary_{what}": stage.canary_events,
        "stable_requests": stage.stable_requests,
        f"stable_{what}": stage.stable_events,
        "margin": margin,
        "e_value": round(math.exp(min(log_e, 700.0)), 4),
        "e_value_stage": round(math.exp(min(log_e - stream.stage_start, 700.0)), 4),
        "e_threshold": round(1 / alpha, 2),
        "buckets": stream.buckets,
        "buckets_at_cap": stream.capped,
        "bucket_seconds": config.bucket_seconds,
        "bucket_max_evidence": config.bucket_max_evidence,
        "overdispersion_canary": round(bucket.r_canary, 5),
        "overdispersion_stable": round(bucket.r_stable, 5),
        "overdispersion_common": round(bucket.r_common, 5),
        "design_effect": round(bucket.design_effect, 3),
        "dispersion_z_canary": round(dispersion_z(bucket.canary_sums), 3),
        "dispersion_z_stable": round(dispersion_z(bucket.stable_sums), 3),
        "stage_end_test": end.test,
        "stage_end_counted": end.counted,
        "stage_end_expected": round(end.expected, 3),
        "stage_end_p_value": None if stream.end_p is None else round(stream.end_p, 6),
        # where bursts can hide from the gate (small buckets, canary z above 1), the exact test needs this too
        "stage_end_capped_p_value": None if stream.end_p_capped is None else round(stream.end_p_capped, 6),
        "stage_end_capped_counted": stream.end_counted,
        "stage_end_capped_expected": round(_null_mean(stream), 3),
        "stage_end_alpha": round(end.level, 6),
        "stage_end_false_rollback_rate": round(end.target, 6),
        "rollout_canary_requests": total.canary_requests,
        "rollout_stable_requests": total.stable_requests,
        "pass_rules_out_ratio": config.detect_ratio,
        "pass_rules_out_pp": config.detect_min_increase,
        "pass_power": config.power,
    }


def _counts_text(what: str, stage: Tally) -> str:
    """This stage's canary and stable counts, as reasons quote them."""
    return (
        f"canary {what} {_rate(stage.canary_events, stage.canary_requests)} vs stable "
        f"{_rate(stage.stable_events, stage.stable_requests)}"
    )


def _end_rejects(stream: Stream) -> bool:
    """Whether the stage-end look rejects: its p-value at its level, and where the exact test ran on
    buckets too small to show bursts, the capped test's p-value at that level too."""
    if stream.end_p is None:
        return False
    level = (stream.end_level or 0.0) * ROUNDING
    return stream.end_p <= level and (stream.end_p_capped is None or stream.end_p_capped <= level)


def _failure_reason(
    metric: str,
    what: str,
    stage: Tally,
    stream: Stream,
    bucket: _Bucket,
    margin: float,
    alphas: tuple[float, float, float],
    log_e: float,
    end_look: bool,
    config: CanaryConfig,
) -> str | None:
    """Why the canary is shown worse (the e-value at 1/α, or the stage-end look rejecting), else None."""
    alpha = alphas[0]
    counts = _counts_text(what, stage)
    worse = "stable" if margin == 1 else f"{margin:g} × stable"
    dispersion = (
        f"{stream.buckets} buckets of {config.bucket_seconds} s, {stream.capped} at the cap, "
        f"over-dispersion {bucket.r_canary:.3f}/{bucket.r_stable:.3f}"
    )
    if log_e >= math.log(1 / alpha):
        return (
            f"{metric}: {counts}; e={_e(log_e)} ≥ {1 / alpha:g} ({dispersion}): "
            f"the canary is worse than {worse}"
        )
    if end_look and _end_rejects(stream):
        end = _end_view(stream, bucket, margin, alphas[1:])
        z = f"dispersion z {dispersion_z(bucket.canary_sums):.2f}/{dispersion_z(bucket.stable_sums):.2f}"
        agrees = (
            ""
            if stream.end_p_capped is None
            else (
                f"; buckets of ~{_per_bucket_canary_requests(stream):.0f} canary requests are too small "
                f"for the gate to see bursts and the canary's z is above {BLIND_DISPERSION_GATE:g}: the "
                f"capped test agrees, {stream.end_counted} counted against {_null_mean(stream):.1f} "
                f"expected, p={stream.end_p_capped:.2g}"
            )
        )
        test = (
            f"exact test, {z} ≤ {DISPERSION_GATE:g}{agrees}; the level that rolls back an identical "
            f"canary with this traffic {end.target * 100:.2g} % of the time"
            if end.test == EXACT
            else f"capped test, {z}, design effect {bucket.design_effect:.2f}"
        )
        return (
            f"{metric}: {counts}; at the stage's end {end.counted} canary {what} counted "
            f"against {end.expected:.1f} expected, p={stream.end_p:.2g} ≤ {end.level:.2g} ({test}; "
            f"{dispersion}): the canary is worse than {worse}"
        )
    return None


@dataclass(frozen=True)
class _Detectable:
    """The regression a pass must have been able to catch, and the canary requests needed to catch it."""

    p_alt: float
    ratio_wins: bool
    need: int | None


def _detectable(
    stream: Stream,
    bucket: _Bucket,
    stage: Tally,
    total: Tally,
    margin: float,
    alpha: float,
    config: CanaryConfig,
) -> _Detectable:
    """The smallest regression a pass rules out, at the stable rate so far, and the requests it needs."""
    rho = total.canary_requests / (total.canary_requests + total.stable_requests)
    p_s = total.stable_events / total.stable_requests
    by_ratio = config.detect_ratio * p_s
    by_points = p_s + config.detect_min_increase / 100
    p_alt = min(max(by_ratio, by_points), 1.0)
    theta1 = rho * p_alt / (rho * p_alt + (1 - rho) * p_s)
    lam = events_needed_mixture(null_share(rho, margin), theta1, alpha, config.power)
    if lam is None:
        need: int | None = None
    else:
        # Over-dispersed traffic carries less information per event: ask for the design effect more.
        phi = _typical_design_effect(stream, bucket, stage, margin)
        per_request = rho * p_alt + (1 - rho) * p_s  # events per request, were the canary that bad
        need = math.ceil(rho * lam * phi / per_request)
    return _Detectable(p_alt, by_ratio >= by_points, need)


def _pass_or_wait(
    metric: str,
    what: str,
    stage: Tally,
    stream: Stream,
    bucket: _Bucket,
    total: Tally,
    margin: float,
    alpha: float,
    log_e: float,
    config: CanaryConfig,
    figures: Figures,
) -> tuple[Outcome, str]:
    """A comparison not shown worse: pass only with enough traffic to have caught the regression, else wait."""
    counts = _counts_text(what, stage)
    if total.stable_requests == 0 or total.canary_requests == 0:
        missing = "stable" if total.stable_requests == 0 else "canary"
        return Outcome.INCONCLUSIVE, f"{metric}: no {missing} traffic to compare with yet"
    detect = _detectable(stream, bucket, stage, total, margin, alpha, config)
    size = _detect_text(config, detect.ratio_wins, what)
    need = detect.need
    figures["canary_requests_needed"] = need
    if need is None:
        return (
            Outcome.INCONCLUSIVE,
            f"{metric}: {counts}; {size} cannot be shown with margin {margin:g} at this share of traffic",
        )
    if total.canary_requests < need:
        return Outcome.INCONCLUSIVE, (
            f"{metric}: canary has {total.canary_requests} of the ~{need} requests needed to rule out "
            f"{size} ({counts}; e={_e(log_e)})"
        )
    if total.canary_events >= detect.p_alt * total.canary_requests:
        # The exposure would have caught this size; the counts are at or beyond it but (capped, tempered)
        # not shown yet: never a pass.
        return Outcome.INCONCLUSIVE, (
            f"{metric}: {counts}; the canary looks at least {size} but it is not shown yet (e={_e(log_e)})"
        )
    return Outcome.PASS, (
        f"{metric}: {counts}; enough traffic to have caught {size} with power {config.power:g} "
        f"(e={_e(log_e)}); a canary less worse than that may pass"
    )


def _compare(
    metric: str,
    what: str,
    stage: Tally,
    evidence: Evidence,
    margin: float,
    alphas: tuple[float, float, float],
    config: CanaryConfig,
    extra: Figures,
    latency: tuple[CohortStats, CohortStats, float] | None = None,
) -> tuple[MetricVerdict, Stream]:
    """The bucketed sequential comparison of one metric, plus the stage-end look; its verdict and state."""
    alpha, end_alpha, end_independent = alphas
    stream = _open_stream(metric, evidence)
    elapsed = (stream.stage_checks + 1) * config.health_check_interval
    end_look = end_alpha > 0 and stream.end_p is None and elapsed >= config.stage_duration
    stream, bucket = _advance(stream, stage, margin, config, end_look, latency)
    if end_look:
        stream = _end_look(stream, bucket, stage, margin, (end_alpha, end_independent))
    log_lr = tuple(a + b for a, b in zip(stream.log_lr, stream.pending, strict=False)) or stream.log_lr
    log_e = log_mixture(log_lr)
    total = evidence.prior.get(metric, Tally()) + _compared(stage)
    figures = _compare_figures(what, stage, stream, bucket, margin, alphas, log_e, total, config, extra)
    failure = _failure_reason(metric, what, stage, stream, bucket, margin, alphas, log_e, end_look, config)
    if failure is not None:
        return MetricVerdict(metric, Outcome.FAIL, failure, figures), stream
    outcome, reason = _pass_or_wait(
        metric, what, stage, stream, bucket, total, margin, alpha, log_e, config, figures
    )
    return MetricVerdict(metric, outcome, reason, figures), stream


def _stage_log_e(stream: Stream) -> float:
    """This stage's part of the log e-value (what `current` reports)."""
    log_lr = tuple(a + b for a, b in zip(stream.log_lr, stream.pending, strict=False)) or stream.log_lr
    return log_mixture(log_lr) - stream.stage_start if log_lr else 0.0


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _host(
    metric: str, canary: float | None, stable: float | None, tolerance: float, worse: int, checks: int
) -> MetricVerdict:
    """Lower-weight comparison of a host reading; fails when worse in most of the stage's checks."""
    figures: Figures = {
        f"canary_{metric}_percent": None if canary is None else round(canary, 2),
        f"stable_{metric}_percent": None if stable is None else round(stable, 2),
        "tolerance_pp": tolerance,
        "worse_checks": worse,
        "checks": checks,
    }
    if canary is None or stable is None:
        return MetricVerdict(metric, Outcome.INCONCLUSIVE, f"{metric}: no host readings", figures)
    text = (
        f"{metric}: canary {canary:.1f} % vs stable {stable:.1f} % (tolerance +{tolerance:g} pp; "
        f"above it in {worse} of {checks} checks this stage)"
    )
    failing = checks >= 3 and 2 * worse > checks
    return MetricVerdict(metric, Outcome.FAIL if failing else Outcome.PASS, text, figures)


def _guards(obs: Observation, config: CanaryConfig, alpha: Mapping[str, float]) -> list[MetricVerdict]:
    """The guards outside the comparisons: health, no data, and the configured SLO ceilings."""
    k = config.sequential_k
    canary, stable = obs.canary, obs.stable
    metrics: list[MetricVerdict] = [
        _health(obs.health_failures, config.max_failed_health_checks),
        _no_data(canary, stable, obs.canary_share, min(alpha.values())),
    ]
    if config.error_rate_ceiling is not None:
        limit = f"{config.error_rate_ceiling:g} % error-rate ceiling"
        metrics.append(
            _ceiling(
                "error_rate_slo", "errors", canary.errors, canary.requests,
                config.error_rate_ceiling / 100, limit, alpha["error_rate_slo"], k,
            )
        )  # fmt: skip
    if config.latency_ceiling_ms is not None:
        q = config.latency_ceiling_quantile
        limit = f"{config.latency_ceiling_ms:g} ms p{q * 100:g} ceiling"
        above = canary.slower_than(config.latency_ceiling_ms)
        metrics.append(
            _ceiling("latency_slo", "slow", above, canary.requests, 1 - q, limit, alpha["latency_slo"], k)
        )
    return metrics


def _error_comparison(
    obs: Observation,
    evidence: Evidence,
    config: CanaryConfig,
    alpha: Mapping[str, float],
    end_alpha: Mapping[str, tuple[float, float]],
) -> tuple[MetricVerdict, Stream, Tally]:
    """The error-rate comparison: its verdict, its stream, and the error counts it judged."""
    canary, stable = obs.canary, obs.stable
    errors = Tally(canary.requests, canary.errors, stable.requests, stable.errors)
    verdict, stream = _compare(
        "error_rate", "errors", errors, evidence, config.error_rate_margin,
        (alpha["error_rate"], *end_alpha["error_rate"]), config,
        {"canary_error_rate": canary.error_rate, "stable_error_rate": stable.error_rate},
    )  # fmt: skip
    return verdict, stream, errors


def _latency_tail_ms(obs: Observation, config: CanaryConfig) -> float | None:
    """The slow-request threshold: `latency_tail_ms`, else baseline p95 plus the minimum difference."""
    base_p95 = obs.baseline.quantile_ms(0.95)
    if config.latency_tail_ms is not None:
        return config.latency_tail_ms
    if base_p95 is not None:
        return base_p95 + config.latency_min_difference_ms
    return None


def _latency_comparison(
    obs: Observation,
    evidence: Evidence,
    config: CanaryConfig,
    alpha: Mapping[str, float],
    end_alpha: Mapping[str, tuple[float, float]],
) -> tuple[MetricVerdict, tuple[Stream, Tally] | None]:
    """The latency-tail comparison: its verdict and, when a threshold is known, its stream and counts."""
    canary, stable = obs.canary, obs.stable
    threshold_ms = _latency_tail_ms(obs, config)
    latency_figures: Figures = {
        "threshold_ms": None if threshold_ms is None else round(threshold_ms, 3),
        "canary_p50_ms": canary.quantile_ms(0.5),
        "canary_p95_ms": canary.quantile_ms(0.95),
        "stable_p50_ms": stable.quantile_ms(0.5),
        "stable_p95_ms": stable.quantile_ms(0.95),
    }
    if threshold_ms is None:
        reason = "latency_tail: no stable latency data yet to set the threshold"
        return MetricVerdict("latency_tail", Outcome.INCONCLUSIVE, reason, latency_figures), None
    slow = Tally(
        canary.requests,
        canary.slower_than(threshold_ms),
        stable.requests,
        stable.slower_than(threshold_ms),
    )
    verdict, stream = _compare(
        "latency_tail", f"slower than {threshold_ms:.1f} ms", slow, evidence, config.latency_margin,
        (alpha["latency_tail"], *end_alpha["latency_tail"]), config, latency_figures,
        (canary, stable, threshold_ms),
    )  # fmt: skip
    return verdict, (stream, slow)


def _host_verdicts(
    obs: Observation, evidence: Evidence, config: CanaryConfig
) -> tuple[list[MetricVerdict], int, int, int]:
    """The cpu and memory verdicts, with the stage's host checks and cpu/memory worse counts so far."""
    host_checks, cpu_worse, memory_worse = evidence.host_checks, evidence.cpu_worse, evidence.memory_worse
    readings = [
        ("cpu", config.cpu_tolerance, [h.cpu_percent for h in obs.canary_load], [h.cpu_percent for h in obs.stable_load]),
        ("memory", config.memory_tolerance, [h.memory_percent for h in obs.canary_load], [h.memory_percent for h in obs.stable_load]),
    ]  # fmt: skip
    if any(tol is not None for _, tol, _, _ in readings) and (obs.canary_load or obs.stable_load):
        host_checks += 1
    metrics: list[MetricVerdict] = []
    for metric, tolerance, c_values, s_values in readings:
        if tolerance is None:
            continue
        c, s = _mean(c_values), _mean(s_values)
        bad = c is not None and s is not None and c - s > tolerance
        if metric == "cpu":
            cpu_worse += bad
            metrics.append(_host(metric, c, s, tolerance, cpu_worse, host_checks))
        else:
            memory_worse += bad
            metrics.append(_host(metric, c, s, tolerance, memory_worse, host_checks))
    return metrics, host_checks, cpu_worse, memory_worse


def judge_sequential(obs: Observation, config: CanaryConfig) -> Judgement:
    """Judges one check with guards, the always-valid count tests and the host comparisons."""
    evidence = obs.evidence.at_stage(obs.stage)
    alpha = alpha_shares(config)
    metrics = _guards(obs, config, alpha)

    current: dict[str, float] = {}
    latest: dict[str, Tally] = {}
    streams: dict[str, Stream] = dict(evidence.streams)
    end_alpha = stage_end_alpha_shares(config)
    verdict, streams["error_rate"], latest["error_rate"] = _error_comparison(
        obs, evidence, config, alpha, end_alpha
    )
    current["error_rate"] = _stage_log_e(streams["error_rate"])
    metrics.append(verdict)

    verdict, latency_state = _latency_comparison(obs, evidence, config, alpha, end_alpha)
    if latency_state is not None:
        streams["latency_tail"], slow = latency_state
        current["latency_tail"] = _stage_log_e(streams["latency_tail"])
        latest["latency_tail"] = slow
    metrics.append(verdict)

    host_metrics, host_checks, cpu_worse, memory_worse = _host_verdicts(obs, evidence, config)
    metrics.extend(host_metrics)
    new_evidence = replace(
        evidence,
        current=current,
        latest=latest,
        streams=streams,
        host_checks=host_checks,
        cpu_worse=cpu_worse,
        memory_worse=memory_worse,
    )
    return Judgement(_overall(metrics), new_evidence)


def _overall(metrics: list[MetricVerdict]) -> Verdict:
    failed = [m for m in metrics if m.outcome is Outcome.FAIL and m.metric in CRITICAL]
    if failed:
        return Verdict(Outcome.FAIL, tuple(metrics), tuple(m.reason for m in failed))
    waiting = [
        m
        for m in metrics
        if (m.metric in CRITICAL and m.outcome is Outcome.INCONCLUSIVE)
        or (m.metric not in CRITICAL and m.outcome is Outcome.FAIL)
    ]
    if waiting:
        return Verdict(Outcome.INCONCLUSIVE, tuple(metrics), tuple(m.reason for m in waiting))
    shown = [m.reason for m in metrics if m.metric in COMPARED]
    return Verdict(Outcome.PASS, tuple(metrics), tuple(shown))


class Judge(Protocol):
    """Judges one check: the observation in, a verdict and the evidence to carry out."""

    def judge(self, obs: Observation, config: CanaryConfig) -> Judgement: ...


class ThresholdJudge:
    """The spec's fixed rules (`judge_threshold`); carries no evidence between checks."""

    def judge(self, obs: Observation, config: CanaryConfig) -> Judgement:
        verdict = judge_threshold(obs.canary, obs.stable, obs.baseline, obs.health_failures, config)
        return Judgement(verdict, obs.evidence)


class SequentialJudge:
    """The always-valid sequential test (`judge_sequential`), the default."""

    def judge(self, obs: Observation, config: CanaryConfig) -> Judgement:
        return judge_sequential(obs, config)


JUDGES: Mapping[str, Judge] = {"threshold": ThresholdJudge(), "sequential": SequentialJudge()}


def judge_for(config: CanaryConfig) -> Judge:
    """The judge a deployment's settings name."""
    return JUDGES[config.judge]


__all__ = [
    "JUDGES",
    "LEVEL_CEILING",
    "Evidence",
    "Judge",
    "Judgement",
    "MetricVerdict",
    "Observation",
    "Outcome",
    "SequentialJudge",
    "Stream",
    "Tally",
    "ThresholdJudge",
    "Verdict",
    "alpha_shares",
    "checks_per_bucket",
    "judge_for",
    "judge_sequential",
    "judge_threshold",
    "stage_end_alpha_shares",
]
