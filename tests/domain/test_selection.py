"""How many canary servers, and which ones."""

from __future__ import annotations

import pytest

from canaryd.domain.selection import Candidate, SelectionError, canary_server_count, select_canary_servers
from canaryd.domain.types import HostLoad


@pytest.mark.parametrize("total", range(2, 21))
@pytest.mark.parametrize("percentage", [1, 10, 20, 25, 50, 100])
def test_count_bounds(total: int, percentage: float) -> None:
    """At least one canary, never more than half of the servers."""
    assert 1 <= canary_server_count(total, percentage) <= total // 2


@pytest.mark.parametrize(
    ("total", "percentage", "expected"),
    [
        (2, 20, 1),
        (5, 20, 1),
        (10, 20, 2),
        (10, 25, 3),  # 2.5 rounds half up
        (10, 15, 2),  # 1.5 rounds half up
        (20, 10, 2),
        (20, 50, 10),
        (3, 50, 1),  # 1.5 → 2, but at most half of 3
        (7, 1, 1),
        (100, 20, 20),
    ],
)
def test_count_table(total: int, percentage: float, expected: int) -> None:
    """The count is round(total * percentage / 100), bounded."""
    assert canary_server_count(total, percentage) == expected


@pytest.mark.parametrize("total", [0, 1])
def test_too_few_servers(total: int) -> None:
    """An application with fewer than two servers cannot have a canary."""
    with pytest.raises(SelectionError, match=rf"at least 2 servers for a canary \(it has {total}\)"):
        canary_server_count(total, 20)


@pytest.mark.parametrize("percentage", [0, -5, 101, float("nan")])
def test_bad_percentage(percentage: float) -> None:
    """A percentage outside (0, 100] is refused."""
    with pytest.raises(ValueError, match="percentage"):
        canary_server_count(10, percentage)


def load(cpu: float | None, mem: float | None) -> HostLoad:
    return HostLoad(cpu_percent=cpu, memory_percent=mem)


@pytest.mark.parametrize(
    ("loads", "percentage", "expected"),
    [
        # score is max(cpu, memory)
        ({1: load(90, 10), 2: load(20, 30), 3: load(50, 50), 4: load(10, 80)}, 25, [2]),
        ({1: load(90, 10), 2: load(20, 30), 3: load(50, 50), 4: load(10, 80)}, 50, [2, 3]),
        # ties by server id
        ({4: load(10, 10), 3: load(10, 10), 2: load(10, 10), 1: load(50, 50)}, 50, [2, 3]),
        # unknown readings sort after known ones, even high ones
        ({1: load(None, None), 2: load(95, 95), 3: load(None, None), 4: load(None, 99)}, 25, [2]),
        ({1: load(None, None), 2: load(95, 95), 3: load(None, None), 4: load(None, 99)}, 50, [2, 4]),
        # one known reading is enough
        ({1: load(None, 40), 2: load(60, None)}, 50, [1]),
        # nothing known: by id
        ({5: load(None, None), 9: load(None, None), 7: load(None, None), 1: load(None, None)}, 50, [1, 5]),
    ],
)
def test_least_loaded_first(loads: dict[int, HostLoad], percentage: float, expected: list[int]) -> None:
    """The least loaded servers are chosen, and returned sorted by id."""
    candidates = [Candidate(server_id, host_load) for server_id, host_load in loads.items()]
    assert select_canary_servers(candidates, percentage) == expected


def test_duplicate_candidates() -> None:
    """A server listed twice is a caller error."""
    with pytest.raises(ValueError, match="unique"):
        select_canary_servers([Candidate(1, load(1, 1)), Candidate(1, load(2, 2))], 50)
