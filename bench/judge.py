"""Simulated canaries with known truths, judged by canaryd's sequential judge and by the spec's threshold rule.

Each replication is one 30-minute stage with equal traffic per cohort, checked every minute, stable error
rate 1 %, latency lognormal (median 100 ms, σ 0.5). Both judges are the very functions the engine calls
(`judge_sequential`, `judge_threshold`) on the same `CohortStats`; nothing is reimplemented here.

    .venv/bin/python bench/judge.py               # the table in docs/judge.md
    .venv/bin/python bench/judge.py --reps 100    # quicker, noisier

Printed per cell: the share of replications rolled back (a false rollback for A/A, a detection otherwise)
and the median minute of the rollback; for the sequential judge also the share that would have passed at
the end of the stage (the rest were still inconclusive). Standard library only (numpy is not installed).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from canaryd.domain.config import CanaryConfig
from canaryd.domain.judge import Evidence, Observation, Outcome, judge_sequential, judge_threshold
from canaryd.domain.types import CohortStats, bucket_of

RATES = (2, 10, 50, 200)  # requests per minute per cohort
BASE_ERROR = 0.01
MEDIAN_MS, SIGMA = 100.0, 0.5


@dataclass(frozen=True)
class Truth:
    name: str
    canary_error: float
    slow_share: float = 0.0  # share of canary requests made much slower
    slow_extra_ms: float = 0.0


TRUTHS = (
    Truth("A/A", BASE_ERROR),
    Truth("errors ×1.5", BASE_ERROR * 1.5),
    Truth("errors ×2", BASE_ERROR * 2),
    Truth("errors ×3", BASE_ERROR * 3),
    Truth("errors +5 pp", BASE_ERROR + 0.05),
    Truth("tail: 5 % +500 ms", BASE_ERROR, 0.05, 500.0),
)


def latency_table(extra_ms: float, rng: random.Random, size: int = 200_000) -> list[int]:
    """Sorted histogram-bucket indices of `size` lognormal latencies (+extra): sampling one is one lookup."""
    return sorted(bucket_of(rng.lognormvariate(math.log(MEDIAN_MS), SIGMA) + extra_ms) for _ in range(size))


def poisson(rng: random.Random, lam: float) -> int:
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def add(
    stats: CohortStats,
    n: int,
    error: float,
    rng: random.Random,
    base: list[int],
    slow: list[int],
    share: float,
) -> None:
    """Records n requests: errors with probability `error`, latency drawn from the tables."""
    buckets = stats.latency_buckets
    size = len(base)
    for _ in range(n):
        table = slow if share and rng.random() < share else base
        b = table[int(rng.random() * size)]
        buckets[b] = buckets.get(b, 0) + 1
        if rng.random() < error:
            stats.errors += 1
    stats.requests += n


@dataclass
class Cell:
    threshold_fail: list[int]
    sequential_fail: list[int]
    sequential_pass_at_end: int = 0
    fired: Counter[str] = field(default_factory=Counter)  # which sequential test rolled back


def run_cell(
    truth: Truth,
    rate: int,
    reps: int,
    minutes: int,
    rng: random.Random,
    tables: dict[float, list[int]],
    seq_cfg: CanaryConfig,
) -> Cell:
    thr_cfg = CanaryConfig(judge="threshold")
    cell = Cell([], [])
    base, slow = tables[0.0], tables[truth.slow_extra_ms]
    for _ in range(reps):
        canary, stable = CohortStats(), CohortStats()
        evidence = Evidence()
        thr_at = seq_at = None
        last = Outcome.INCONCLUSIVE
        for minute in range(1, minutes + 1):
            add(canary, poisson(rng, rate), truth.canary_error, rng, base, slow, truth.slow_share)
            add(stable, poisson(rng, rate), BASE_ERROR, rng, base, base, 0.0)
            if thr_at is None and judge_threshold(canary, stable, stable, 0, thr_cfg).outcome is Outcome.FAIL:
                thr_at = minute
            if seq_at is None:
                obs = Observation(canary, stable, stable, canary_share=0.5, evidence=evidence)
                judgement = judge_sequential(obs, seq_cfg)
                evidence, last = judgement.evidence, judgement.verdict.outcome
                if last is Outcome.FAIL:
                    seq_at = minute
                    cell.fired.update(
                        m.metric for m in judgement.verdict.metrics if m.outcome is Outcome.FAIL
                    )
            if thr_at is not None and seq_at is not None:
                break
        if thr_at is not None:
            cell.threshold_fail.append(thr_at)
        if seq_at is not None:
            cell.sequential_fail.append(seq_at)
        elif last is Outcome.PASS:
            cell.sequential_pass_at_end += 1
    return cell


def fmt(fails: list[int], reps: int) -> str:
    share = 100 * len(fails) / reps
    median = f"{statistics.median(fails):.0f}" if fails else "–"
    return f"{share:5.1f} % {median:>3}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reps", type=int, default=400, help="replications per regression cell (default 400)"
    )
    parser.add_argument(
        "--aa-reps",
        type=int,
        default=1600,
        help="replications per A/A cell (default 1600: MC error 0.25 pp at 1 %%)",
    )
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--minutes", type=int, default=30, help="stage length, one check per minute")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a CanaryConfig field of the sequential judge, e.g. --set alpha=0.02",
    )
    parser.add_argument("--only", help="run only truths whose name contains this text")
    parser.add_argument("--rates", help="comma-separated req/min/cohort (default 2,10,50,200)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    seq_cfg = CanaryConfig.model_validate(overrides)
    rates = tuple(int(r) for r in args.rates.split(",")) if args.rates else RATES
    rng = random.Random(args.seed)
    started = time.monotonic()
    tables = {extra: latency_table(extra, rng) for extra in {0.0, *(t.slow_extra_ms for t in TRUTHS)}}
    defaults = seq_cfg
    print(
        f"command: .venv/bin/python {' '.join(sys.argv)}  "
        f"(seed {args.seed}, reps {args.reps}, A/A reps {args.aa_reps})"
    )
    print(
        f"sequential judge: alpha {defaults.alpha}, k {defaults.sequential_k}, margins "
        f"{defaults.error_rate_margin}/{defaults.latency_margin}, pass needs power {defaults.power} against "
        f"×{defaults.detect_ratio:g} (≥ +{defaults.detect_min_increase:g} pp)"
    )
    print(f"stable errors {BASE_ERROR:.0%}, latency lognormal median {MEDIAN_MS:g} ms σ {SIGMA}, "
          f"{args.minutes}-minute stage checked every minute, equal traffic per cohort")  # fmt: skip
    print()
    head = f"| {'truth':<18} | req/min/cohort | threshold: rolled back, median min | sequential: rolled back, median min | sequential: passed at end | sequential: tests that fired |"
    print(head)
    print("|" + "|".join("-" * (len(part)) for part in head.split("|")[1:-1]) + "|")
    for truth in TRUTHS:
        if args.only and args.only not in truth.name:
            continue
        for rate in rates:
            reps = args.aa_reps if truth.name == "A/A" else args.reps
            cell = run_cell(truth, rate, reps, args.minutes, rng, tables, seq_cfg)
            print(
                f"| {truth.name:<18} | {rate:>14} | {fmt(cell.threshold_fail, reps):>34} | "
                f"{fmt(cell.sequential_fail, reps):>35} | "
                f"{100 * cell.sequential_pass_at_end / reps:>23.1f} % | "
                f"{', '.join(f'{k} {v}' for k, v in sorted(cell.fired.items())):<28} |",
                flush=True,
            )
    se = 100 * math.sqrt(0.01 * 0.99 / args.aa_reps)
    print(f"\nMonte Carlo standard error of a 1 % rate with {args.aa_reps} A/A reps: {se:.2f} pp "
          f"({args.reps} reps per regression cell); "
          f"run time {time.monotonic() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
