"""A pytest plugin that measures the CPU each test costs, its own process and everything it starts (nginx,
HAProxy, sample apps, canaryd processes), with a cgroup v1 `cpuacct` group per pytest(-xdist) process.

The suite is bound by CPU on two cores (about 1,000 s of CPU in ~10 minutes), so CPU, not wall time, says
what a test costs the others. Needs root and /sys/fs/cgroup/cpuacct (cgroup v1); servers that were already
running (PostgreSQL, Redis) are not counted.

    .venv/bin/pytest -p tests.cpu_accounting [-n 3] tests/e2e
    CPU_ACCOUNTING_OUT=/tmp/cpu .venv/bin/pytest -p tests.cpu_accounting ...

Each process appends `nodeid, CPU s of the tree, wall s, CPU s of the pytest process itself` lines (tab
separated) to OUT/<worker>.tsv (default /tmp/cpu-accounting).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class Accounting:
    """This process's cgroup and the file its tests' figures go to."""

    def __init__(self, worker: str, out: Path) -> None:
        if not (CPUACCT / "cpuacct.usage").exists():
            raise pytest.UsageError(f"{CPUACCT} (cgroup v1 cpuacct) is not mounted here")
        self.group = CPUACCT / f"canaryd-tests-{worker}-{os.getpid()}"
        self.group.mkdir(exist_ok=True)
        (self.group / "cgroup.procs").write_text(str(os.getpid()))
        out.mkdir(parents=True, exist_ok=True)
        self.out: IO[str] = (out / f"{worker}.tsv").open("a")

    def usage(self) -> float:
        return int((self.group / "cpuacct.usage").read_text()) / 1e9


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


ACCOUNTING = pytest.StashKey[Accounting]()


def pytest_configure(config: pytest.Config) -> None:
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    out = Path(os.environ.get("CPU_ACCOUNTING_OUT", "/tmp/cpu-accounting"))
    config.stash[ACCOUNTING] = Accounting(worker, out)


def pytest_unconfigure(config: pytest.Config) -> None:
    if ACCOUNTING in config.stash:
        config.stash[ACCOUNTING].out.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    accounting = item.config.stash[ACCOUNTING]
    tree, own, began = accounting.usage(), _own_cpu(), time.monotonic()
    yield
    figures = (accounting.usage() - tree, time.monotonic() - began, _own_cpu() - own)
    accounting.out.write("\t".join([item.nodeid, *(f"{x:.2f}" for x in figures)]) + "\n")
    accounting.out.flush()
