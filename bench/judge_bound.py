"""What no judge can beat: the power bound for a regression at a false-rollback limit that must hold for
every stable error rate (docs/judge.md, "What any judge can reach").

For one stage with n_c canary and n_s stable requests, the most powerful test of "both cohorts err at p"
against "the canary errs at p_c, stable at p_s" (Neyman-Pearson, randomised at the boundary) catches the
regression with some probability; a judge whose false-rollback rate is at most `level` for *every* p must
in particular keep it at the p where that probability is lowest (the least favourable stable rate), so
it cannot catch more than that minimum — whatever it looks at, however often (the per-cohort totals are
sufficient for the whole stage's data under both hypotheses). Request counts are fixed at their means.

    .venv/bin/python bench/judge_bound.py
"""

from __future__ import annotations

import sys

try:
    import numpy as np
    from scipy.stats import binom  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("bench/judge_bound.py needs numpy and scipy (dev dependencies): run `make setup`.")

MINUTES = 30
STABLE_ERROR = 0.01
#: (name, canary requests a minute, stable : canary, the canary's error rate)
CELLS = (
    ("errors +5 pp, 10 req/min, 1:1", 10, 1, STABLE_ERROR + 0.05),
    ("errors +5 pp, 10 req/min, 1:9", 10, 9, STABLE_ERROR + 0.05),
    ("errors ×3, 10 req/min, 1:9", 10, 9, 3 * STABLE_ERROR),
)
LEVELS = (0.0064, 0.0068, 0.008, 0.01)
NULL_RATES = np.arange(0.0025, 0.1, 0.00125)


def most_powerful(alt: np.ndarray, null: np.ndarray, level: float) -> float:
    """Power of the Neyman-Pearson test of `null` against `alt` (joint pmfs) at size `level`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(null > 0, alt / null, np.inf).ravel()
    order = np.argsort(-ratio, kind="stable")
    a, h = alt.ravel()[order], null.ravel()[order]
    size = np.cumsum(h)
    k = int(np.searchsorted(size, level))  # the first outcome that no longer fits whole
    before = float(size[k - 1]) if k else 0.0
    return float(a[:k].sum() + (level - before) / h[k] * a[k])


def bound(rate: int, split: int, canary_error: float, level: float) -> tuple[float, float, float]:
    """(least favourable stable rate, the power bound there, the best power were p known to be 1 %)."""
    n_c, n_s = rate * MINUTES, rate * MINUTES * split
    x, y = np.arange(n_c + 1), np.arange(n_s + 1)
    alt = np.outer(binom.pmf(x, n_c, canary_error), binom.pmf(y, n_s, STABLE_ERROR))
    powers = [
        most_powerful(alt, np.outer(binom.pmf(x, n_c, p), binom.pmf(y, n_s, p)), level) for p in NULL_RATES
    ]
    worst = int(np.argmin(powers))
    known = most_powerful(
        alt, np.outer(binom.pmf(x, n_c, STABLE_ERROR), binom.pmf(y, n_s, STABLE_ERROR)), level
    )
    return float(NULL_RATES[worst]), powers[worst], known


def main() -> None:
    print("| regression | false-rollback limit (every stable rate) | least favourable stable rate | "
          "at most caught | if the stable rate were known (1 %) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, rate, split, canary_error in CELLS:
        for level in LEVELS:
            p, power, known = bound(rate, split, canary_error, level)
            print(
                f"| {name} | {100 * level:.2f} % | {100 * p:.2f} % | {100 * power:.1f} % | {100 * known:.1f} % |"
            )


if __name__ == "__main__":
    main()
