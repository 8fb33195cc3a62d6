"""A split (share of requests for the canary) turned into integer per-server proxy weights.

A split is a share of *requests*, whatever the size of each cohort. With `c` canary servers of weight `wc`
and `s` stable servers of weight `ws`, the canary cohort gets c·wc / (c·wc + s·ws) of the requests. So for
a target share f the weights must satisfy wc/ws = f·s / ((1 - f)·c). When that ratio, reduced, fits within
the proxy's largest weight the split is exact; otherwise the closest ratio with both weights in
[1, max_weight] is used and `effective_percentage` says what it really gives.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, slots=True)
class SplitWeights:
    """Per-server weights for each cohort; a weight of 0 means that cohort is left out of the pool."""

    canary_weight: int
    stable_weight: int
    effective_percentage: float  # the canary's share of requests these weights really give
    requested_percentage: float = 0.0

    @property
    def exact(self) -> bool:
        return self.error_pp == 0

    @property
    def error_pp(self) -> float:
        """Distance between what was asked and what the weights give, in percentage points."""
        return abs(self.effective_percentage - self.requested_percentage)


def _fraction_of(percentage: float) -> Fraction:
    # Fraction(str(p)) reads 0.1 as 1/10, not as the binary float nearest to it.
    if isinstance(percentage, bool) or not math.isfinite(percentage):
        raise ValueError(f"percentage must be a finite number, not {percentage!r}")
    if not 0 <= percentage <= 100:
        raise ValueError(f"percentage must be between 0 and 100, not {percentage:g}")
    return Fraction(str(percentage)) / 100


def _share(canary_count: int, stable_count: int, wc: int, ws: int) -> Fraction:
    return Fraction(canary_count * wc, canary_count * wc + stable_count * ws)


def _bracket(target: Fraction, bound: int) -> tuple[Fraction, Fraction]:
    """The closest fractions below and above `target` with numerator and denominator in [1, bound].

    Stern-Brocot descent with whole runs of steps at once, so it takes O(log bound) iterations. Assumes
    1/bound < target < bound and that `target` itself is not such a fraction.
    """
    a, b = target.numerator, target.denominator
    lo_p, lo_q, hi_p, hi_q = 0, 1, 1, 0
    while lo_p + hi_p <= bound and lo_q + hi_q <= bound:
        if (lo_p + hi_p) * b < a * (lo_q + hi_q):
            # Mediant below the target: move `lo` right k times, staying below the target and in bounds.
            k = (a * lo_q - b * lo_p - 1) // (b * hi_p - a * hi_q)
            k = min(k, (bound - lo_p) // hi_p, (bound - lo_q) // hi_q if hi_q else k)
            lo_p, lo_q = lo_p + k * hi_p, lo_q + k * hi_q
        else:
            k = (b * hi_p - a * hi_q - 1) // (a * lo_q - b * lo_p)
            k = min(k, (bound - hi_p) // lo_p if lo_p else k, (bound - hi_q) // lo_q)
            hi_p, hi_q = hi_p + k * lo_p, hi_q + k * lo_q
    return Fraction(lo_p, lo_q), Fraction(hi_p, hi_q)


# Cached: every tick of every monitored deployment asks for its routes two or three times, and the Fraction
# arithmetic was ~3 % of a worker's CPU; the arguments take few distinct values (stage percentages, counts).
@functools.lru_cache(maxsize=4096, typed=True)
def split_weights(canary_count: int, stable_count: int, percentage: float, max_weight: int) -> SplitWeights:
    """Weights giving the canary cohort `percentage` % of requests, exactly when possible.

    0 % leaves the canary cohort out (canary_weight 0), 100 % leaves the stable cohort out.
    Raises ValueError when the split cannot be built at all (no server in a cohort that needs traffic).
    """
    f = _fraction_of(percentage)
    if canary_count < 0 or stable_count < 0:
        raise ValueError("server counts must not be negative")
    if max_weight < 1:
        raise ValueError("max_weight must be at least 1")
    if f == 0:
        if stable_count == 0:
            raise ValueError("a split of 0 % needs at least one stable server")
        return SplitWeights(0, 1, 0.0, float(percentage))
    if f == 1:
        if canary_count == 0:
            raise ValueError("a split of 100 % needs at least one canary server")
        return SplitWeights(1, 0, 100.0, float(percentage))
    if canary_count == 0 or stable_count == 0:
        raise ValueError(
            f"a split of {percentage:g} % needs canary and stable servers "
            f"(there are {canary_count} canary and {stable_count} stable)"
        )

    ratio = f * stable_count / ((1 - f) * canary_count)  # wc / ws, reduced by Fraction
    if ratio.numerator <= max_weight and ratio.denominator <= max_weight:
        wc, ws = ratio.numerator, ratio.denominator
    elif ratio <= Fraction(1, max_weight):
        wc, ws = 1, max_weight
    elif ratio >= max_weight:
        wc, ws = max_weight, 1
    else:
        # The share grows with wc/ws, so the closest share comes from one of the two bracketing ratios.
        below, above = _bracket(ratio, max_weight)
        err_below = f - _share(canary_count, stable_count, below.numerator, below.denominator)
        err_above = _share(canary_count, stable_count, above.numerator, above.denominator) - f
        best = below if err_below <= err_above else above
        wc, ws = best.numerator, best.denominator
    effective = float(_share(canary_count, stable_count, wc, ws) * 100)
    return SplitWeights(wc, ws, effective, float(percentage))


def _servers(count: int, what: str) -> str:
    return f"{count} {what} server" + ("" if count == 1 else "s")


def check_split_feasible(
    canary_count: int,
    stable_count: int,
    percentage: float,
    max_weight: int,
    tolerance_pp: float = 0.1,
    *,
    proxy: str = "proxy",
) -> str | None:
    """None if the split can be built within `tolerance_pp` percentage points, else a message why not."""
    try:
        weights = split_weights(canary_count, stable_count, percentage, max_weight)
    except ValueError as exc:
        return str(exc)
    if weights.error_pp <= tolerance_pp:
        return None
    return (
        f"{percentage:g} % cannot be expressed with {proxy} weights up to {max_weight} for "
        f"{canary_count} canary and {_servers(stable_count, 'stable')}; "
        f"the closest is {weights.effective_percentage:.4g} %"
    )


__all__ = ["SplitWeights", "check_split_feasible", "split_weights"]
