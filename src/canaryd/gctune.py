"""The garbage collector tuned for a long-running process of canaryd's (a worker, `canaryd serve`), once it
has started; never in a process it shares with other things (tests, the demo)."""

from __future__ import annotations

import gc

#: Allocations (less deallocations) between two collections of the youngest generation (Python's default:
#: 700). A tick allocates thousands of short-lived objects (rows, JSON, the judge's state); collecting every
#: 700 of them promoted many to the older generations, whose collections then walked the whole heap.
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """What exists once the process has started (modules, FastAPI's routes and models, SQLAlchemy's mappers,
    the pool) is moved out of the collector's sight for good (`gc.freeze`), so the full collections no
    longer walk it, and the youngest generation is collected less often (fewer objects promoted, so fewer
    full collections). In a worker the collector took ~13 % of the CPU per tick before; in the API a full
    collection walked ~170,000 objects of its startup, ~300 ms of a niced API on a loaded machine, and an
    event published meanwhile reached its 500 WebSocket subscribers that much later (docs/benchmarks.md,
    "Fourth pass")."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
