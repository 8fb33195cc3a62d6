"""Longest tests first, under pytest-xdist's `--dist load` (what `scripts/test.sh` runs).

The suite spends most of its time in a few dozen end-to-end tests of 15-60 s, mostly waiting for real stages.
In file order the last of them started near the end, and the run waited for it on one worker while the
others were idle. Here each worker sorts what it collected by the wall time the test took last time
(tests/durations.json, written by tools/test_durations.py), longest first, and the controller hands tests
out one at a time as workers free up: the longest-processing-time-first rule.

The modules in KEEP_TOGETHER share a module-scoped fixture (a browser, a built image, a server) and some of
their tests check what the others left behind: each goes to one worker whole, in file order, placed by its
total time. (pytest-xdist's own `loadgroup` cannot do this under pytest 9: it renames items through an
attribute pytest no longer reads, and schemathesis gives its generated items one shared node id.)
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScheduling
from xdist.workermanage import WorkerController

#: Wall seconds of the tests that take at least half a second.
DURATIONS: dict[str, float] = json.loads((Path(__file__).parent / "durations.json").read_text())
#: A test not in DURATIONS is expected to take this long: most are new, short tests.
UNKNOWN_SECONDS = 0.5
#: Modules with a module-scoped fixture; pytest_collection_modifyitems fails the run if one is missing.
KEEP_TOGETHER = frozenset(
    {
        "tests/api/test_openapi.py",
        "tests/deploy/test_image.py",
        "tests/fuzz/test_renderers.py",
        "tests/fuzz/test_schema.py",
        "tests/ui/test_console.py",
    }
)


def module_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """On xdist's workers (the controller does not collect), sorts the items longest first."""
    if hasattr(config, "workerinput"):
        check_kept_together(items)
        longest_first(items)
    yield


def check_kept_together(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        chains = fixtures.name2fixturedefs.values() if fixtures is not None else ()
        shared = any(d.scope in ("module", "class", "package") for chain in chains for d in chain)
        if shared and module_of(item.nodeid) not in KEEP_TOGETHER:
            raise pytest.UsageError(
                f"{item.nodeid} uses a module-scoped fixture: add {module_of(item.nodeid)} to "
                "KEEP_TOGETHER in tests/scheduling.py"
            )


def longest_first(items: list[pytest.Item]) -> None:
    def unit(item: pytest.Item) -> str:
        module = module_of(item.nodeid)
        return module if module in KEEP_TOGETHER else item.nodeid

    total: defaultdict[str, float] = defaultdict(float)
    for item in items:
        total[unit(item)] += DURATIONS.get(item.nodeid, UNKNOWN_SECONDS)
    items.sort(key=lambda item: (-total[unit(item)], unit(item)))  # stable: a module keeps its file order


class LongestFirst(LoadScheduling):
    """`--dist load` handing out one test (or one KEEP_TOGETHER module) at a time, in collection order,
    to whichever worker has at most one left. A worker runs a test only once it knows the next one (for
    fixture teardown), so one more stays queued behind the running one."""

    def schedule(self) -> None:
        if self.collection is not None:  # a worker was added later
            for node in self.nodes:
                self.check_schedule(node)
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        collection = next(iter(self.node2collection.values()))
        self.collection = collection
        self.pending[:] = range(len(collection))
        for _ in range(2):  # round robin, so that each worker starts with one of the longest
            for node in self.nodes:
                if self.pending:
                    self._send_tests(node, self._next_unit_size())
        if not self.pending:
            for node in self.nodes:
                node.shutdown()

    def check_schedule(self, node: WorkerController, duration: float = 0) -> None:
        if node.shutting_down:
            return
        while self.pending and len(self.node2pending[node]) < 2:
            self._send_tests(node, self._next_unit_size())
        if not self.pending:
            node.shutdown()

    def _next_unit_size(self) -> int:
        assert self.collection is not None
        first = module_of(self.collection[self.pending[0]])
        if first not in KEEP_TOGETHER:
            return 1
        size = 1
        while size < len(self.pending) and module_of(self.collection[self.pending[size]]) == first:
            size += 1
        return size


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadScheduling | None:
    if config.getvalue("dist") != "load":
        return None
    return LongestFirst(config, log)
