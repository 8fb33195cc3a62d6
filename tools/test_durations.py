"""Writes tests/durations.json from a run of the suite under tests/cpu_accounting.py: each test's wall
seconds, for the tests that took at least MIN_SECONDS. conftest.py starts the longest tests first, so that
pytest-xdist's workers do not end on one long test started last.

    CPU_ACCOUNTING_OUT=/tmp/acct .venv/bin/pytest -q -n 3 -p tests.cpu_accounting -m "not solo"
    .venv/bin/python tools/test_durations.py /tmp/acct > tests/durations.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIN_SECONDS = 0.5


def main(out_dir: Path) -> None:
    walls: dict[str, float] = {}
    for tsv in sorted(out_dir.glob("*.tsv")):
        for line in tsv.read_text().splitlines():
            nodeid, _cpu, wall, *_ = line.split("\t")
            walls[nodeid.split("@")[0]] = float(wall)
    kept = {k: round(v, 1) for k, v in sorted(walls.items()) if v >= MIN_SECONDS}
    json.dump(kept, sys.stdout, indent=0, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
