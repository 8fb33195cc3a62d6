"""Split percentages turned into per-server weights: exact where possible, otherwise the closest."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryd.domain.split import check_split_feasible, split_weights

COHORTS = [(1, 4), (2, 3), (1, 1), (3, 7)]
PERCENTAGES = [10, 25, 50, 75, 100, 0.5, 0]


def share(canary: int, stable: int, wc: int, ws: int) -> Fraction:
    """The canary's share of requests given by the weights, exactly."""
    return Fraction(canary * wc, canary * wc + stable * ws)


@pytest.mark.parametrize(("canary", "stable"), COHORTS)
@pytest.mark.parametrize("percentage", PERCENTAGES)
def test_split_is_exact(canary: int, stable: int, percentage: float) -> None:
    """Common splits are exact for common cohort sizes, whatever the number of servers."""
    w = split_weights(canary, stable, percentage, max_weight=1000)
    assert share(canary, stable, w.canary_weight, w.stable_weight) == Fraction(str(percentage)) / 100
    assert w.effective_percentage == percentage
    assert w.exact


@pytest.mark.parametrize(
    ("canary", "stable", "percentage", "canary_weight", "stable_weight"),
    [
        (1, 4, 25, 4, 3),  # 1·4 / (1·4 + 4·3) = 1/4: one request in four, not one in seventeen
        (1, 4, 10, 4, 9),
        (1, 1, 50, 1, 1),
        (2, 3, 25, 1, 2),
        (1, 4, 0, 0, 1),  # 0 %: canary absent
        (1, 4, 100, 1, 0),  # 100 %: stable absent
        (3, 7, 0.5, 7, 597),
    ],
)
def test_known_weights(
    canary: int, stable: int, percentage: float, canary_weight: int, stable_weight: int
) -> None:
    """The weights are the smallest that give the split."""
    w = split_weights(canary, stable, percentage, max_weight=1000)
    assert (w.canary_weight, w.stable_weight) == (canary_weight, stable_weight)


@pytest.mark.parametrize(
    ("canary", "stable", "percentage", "max_weight", "effective"),
    [
        (1, 4, 0.01, 1000, 100 / 4001),  # the smallest share possible: 1 against 4·1000
        (1, 1, 99.99, 1000, 100_000 / 1001),  # the largest
        (1, 4, 0.1, 100, 100 / 401),
        (1, 2, 100 / 3, 1000, 100 / 3),  # 33.333…: wc/ws = 1/1, within float noise
    ],
)
def test_closest_when_inexact(
    canary: int, stable: int, percentage: float, max_weight: int, effective: float
) -> None:
    """Beyond what the weights can express the closest share is used and reported."""
    w = split_weights(canary, stable, percentage, max_weight)
    assert w.effective_percentage == pytest.approx(effective, abs=1e-4)
    assert 1 <= w.canary_weight <= max_weight and 1 <= w.stable_weight <= max_weight


def test_haproxy_range() -> None:
    """With HAProxy's 256 the weights stay in range and land close."""
    w = split_weights(3, 17, 12.345, 256)
    assert max(w.canary_weight, w.stable_weight) <= 256
    assert w.error_pp < 0.01


@pytest.mark.parametrize(
    ("canary", "stable", "percentage", "message"),
    [
        (0, 4, 10, "needs canary and stable servers"),
        (2, 0, 10, "needs canary and stable servers"),
        (0, 4, 100, "100 % needs at least one canary server"),
        (2, 0, 0, "0 % needs at least one stable server"),
        (1, 4, -1, "between 0 and 100"),
        (1, 4, 101, "between 0 and 100"),
        (1, 4, float("nan"), "finite"),
    ],
)
def test_impossible_splits(canary: int, stable: int, percentage: float, message: str) -> None:
    """Splits that cannot be built at all raise ValueError saying why."""
    with pytest.raises(ValueError, match=message):
        split_weights(canary, stable, percentage, 1000)


@pytest.mark.parametrize(
    ("percentage", "max_weight", "expected"),
    [
        (25, 1000, None),
        (0.01, 1000, None),  # 0.025 % is within 0.1 pp
        (
            0.01,
            10,
            "0.01 % cannot be expressed with nginx weights up to 10 for 1 canary and 4 stable servers; "
            "the closest is 2.439 %",
        ),
    ],
)
def test_check_split_feasible(percentage: float, max_weight: int, expected: str | None) -> None:
    """Feasibility is judged against the tolerance and explained in words."""
    assert check_split_feasible(1, 4, percentage, max_weight, proxy="nginx") == expected


def test_check_split_feasible_reports_impossible_cohorts() -> None:
    """A split that cannot be built at all is reported, not raised."""
    assert check_split_feasible(0, 4, 10, 1000) == "a split of 10 % needs canary and stable servers " + (
        "(there are 0 canary and 4 stable)"
    )


@settings(max_examples=300, deadline=None)
@given(
    canary=st.integers(1, 50),
    stable=st.integers(1, 200),
    percentage=st.floats(0.001, 99.999, allow_nan=False),
    max_weight=st.integers(1, 1_000_000),
)
def test_weights_in_range_and_share_within_reported_error(
    canary: int, stable: int, percentage: float, max_weight: int
) -> None:
    """Weights stay in [1, max_weight] and the share they give is what is reported."""
    w = split_weights(canary, stable, percentage, max_weight)
    assert 1 <= w.canary_weight <= max_weight and 1 <= w.stable_weight <= max_weight
    real = float(share(canary, stable, w.canary_weight, w.stable_weight) * 100)
    assert real == pytest.approx(w.effective_percentage, abs=1e-9)
    assert abs(real - percentage) <= w.error_pp + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    canary=st.integers(1, 6),
    stable=st.integers(1, 12),
    percentage=st.floats(0.001, 99.999, allow_nan=False),
    max_weight=st.integers(1, 40),
)
def test_weights_are_the_best_possible(canary: int, stable: int, percentage: float, max_weight: int) -> None:
    """No pair of weights in range comes closer to the target than the chosen one (brute force)."""
    target = Fraction(str(percentage)) / 100
    w = split_weights(canary, stable, percentage, max_weight)
    chosen = abs(share(canary, stable, w.canary_weight, w.stable_weight) - target)
    best = min(
        abs(share(canary, stable, wc, ws) - target)
        for wc in range(1, max_weight + 1)
        for ws in range(1, max_weight + 1)
    )
    assert chosen == best


def test_large_max_weight_is_fast() -> None:
    """A million as the largest weight still answers at once (no linear search)."""
    w = split_weights(7, 993, 1 / 3, 1_000_000)
    assert w.error_pp < 1e-6
