"""The batches of a rolling update (strategy `rolling`), read from a deployment's snapshot.

Batch 1 is the servers chosen at the start (the least loaded); each later batch is the next servers not yet
upgraded, in the application's order. `canary_ids` lists the servers of the batches started so far, in
batch order; the stage index is that of the last batch that was *judged*: while batch k + 1 is being
deployed the stage is still k, so a batch is in progress exactly when `canary_ids` holds more servers than
the batches up to the stage. That is all a fresh tick needs after a crash: no other marker is stored.
"""

from __future__ import annotations

from canaryd.domain.config import RollingSettings
from canaryd.domain.plan import Snapshot
from canaryd.domain.strategy import batch_sizes
from canaryd.domain.types import State


def sizes(s: Snapshot) -> tuple[int, ...]:
    """How many servers each batch of the deployment upgrades."""
    return batch_sizes(s.config.rolling or RollingSettings(), len(s.servers))


def servers_of(s: Snapshot, index: int) -> tuple[int, ...]:
    """The ids of batch `index` (0-based): the started batches' servers in order, then the others."""
    order = (*s.canary_ids, *(sid for sid in s.stable_ids))
    start = sum(sizes(s)[:index])
    return order[start : start + sizes(s)[index]]


def settled(s: Snapshot) -> int:
    """How many servers the batches up to the deployment's stage hold (all of them deployed and judged or
    being judged)."""
    return sum(sizes(s)[: s.stage_index + 1])


def in_progress(s: Snapshot) -> tuple[int, ...]:
    """The servers of the batch being deployed while monitoring (empty when none is)."""
    if s.strategy != "rolling" or s.state is not State.MONITORING:
        return ()
    return s.canary_ids[settled(s) :]


def held_back(s: Snapshot, state: State) -> frozenset[int]:
    """The servers the proxy must not serve in `state` because their batch is being deployed: all of it
    stays out until all of it is healthy (the first batch while deploying, later ones while monitoring;
    a pause keeps them out)."""
    if s.strategy != "rolling":
        return frozenset()
    phase = s.paused_from if state is State.PAUSED else state
    if phase is State.DEPLOYING:
        return frozenset(s.canary_ids)
    if phase in (State.MONITORING, State.WAITING_FOR_APPROVAL):
        return frozenset(s.canary_ids[settled(s) :])
    return frozenset()


def note(s: Snapshot, index: int) -> str:
    """'batch 2 of 4: servers web-3, web-4' for the history."""
    names = ", ".join(s.server(sid).name for sid in servers_of(s, index))
    return f"batch {index + 1} of {len(sizes(s))}: servers {names}"


def progress(
    state: State, paused_from: State | None, stage_index: int, started: int, sizes: tuple[int, ...]
) -> tuple[str, ...]:
    """Where each batch stands, for the status and the console: `upgraded` (judged and passed), `judged`
    (its stage runs), `deploying` (drained, being deployed), `to come`, `upgrading` (a promotion upgrades
    the rest), `rolled back` or `not run`. `started`: how many servers the started batches hold;
    `stage_index`: the last batch judged or being judged (as the module docstring says)."""
    phase = paused_from if state is State.PAUSED and paused_from is not None else state
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if phase is State.COMPLETED:
        return ("upgraded",) * len(sizes)
    if phase in (State.ROLLING_BACK, State.ROLLED_BACK, State.FAILED):
        return tuple("rolled back" if first < started else "not run" for first in starts)
    if phase is State.PENDING:
        return ("to come",) * len(sizes)
    if phase is State.DEPLOYING:
        return ("deploying",) + ("to come",) * (len(sizes) - 1)
    if phase is State.PROMOTING:
        return tuple("upgraded" if first < started else "upgrading" for first in starts)
    busy = started > sum(sizes[: stage_index + 1])  # the next batch is being deployed
    out = []
    for i in range(len(sizes)):
        if i < stage_index or (i == stage_index and busy):
            out.append("upgraded")
        elif i == stage_index:
            out.append("judged")
        else:
            out.append("deploying" if busy and i == stage_index + 1 else "to come")
    return tuple(out)


__all__ = ["held_back", "in_progress", "note", "progress", "servers_of", "settled", "sizes"]
