"""The lease heartbeat of a tick (RolloutDriver._leased): renewed while a long tick works, the tick stopped
when the lease is lost, and no renewal at all for a tick shorter than a third of the lease."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from canaryd.engine.driver import LeaseTerms, RolloutDriver
from canaryd.engine.store import LeaseLost
from canaryd.observability import Metrics

LEASE_SECONDS = 3.0  # the smallest the settings allow: a renewal is due every second


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class RenewingStore:
    """Only what the heartbeat uses: renew(), answering `held` and noting when it was asked."""

    def __init__(self, held: bool) -> None:
        self.held = held
        self.renewals: list[float] = []

    async def renew(self, deployment_id: int, lease: str, until: datetime) -> bool:
        self.renewals.append(time.monotonic())
        return self.held


def driver(store: RenewingStore) -> RolloutDriver:
    nothing = cast(Any, None)
    terms = LeaseTerms(LEASE_SECONDS, 60.0)
    return RolloutDriver(cast(Any, store), nothing, Clock(), nothing, nothing, Metrics(), terms, "test")


async def test_a_short_tick_renews_nothing() -> None:
    """A tick that ends before a third of the lease has passed never renews it."""
    store = RenewingStore(held=True)

    async def work() -> str:
        await asyncio.sleep(0.05)
        return "done"

    assert await driver(store)._leased(1, "lease", work()) == "done"
    await asyncio.sleep(LEASE_SECONDS / 3 + 0.2)  # nothing was left behind to renew later
    assert store.renewals == []


async def test_a_long_tick_renews_its_lease_every_third() -> None:
    """A tick longer than a third of the lease renews it about every second, and its result comes back."""
    store = RenewingStore(held=True)
    started = time.monotonic()

    async def work() -> str:
        await asyncio.sleep(2.5)
        return "done"

    assert await driver(store)._leased(1, "lease", work()) == "done"
    assert len(store.renewals) == 2, store.renewals
    first, second = (at - started for at in store.renewals)
    assert 0.9 <= first <= 1.6 and 1.9 <= second <= 2.6, store.renewals


async def test_a_tick_whose_lease_was_taken_over_is_stopped() -> None:
    """When the renewal finds the lease taken, the tick is cancelled and LeaseLost raised."""
    store = RenewingStore(held=False)
    finished = False

    async def work() -> None:
        nonlocal finished
        await asyncio.sleep(10)
        finished = True

    started = time.monotonic()
    with pytest.raises(LeaseLost, match="could not be renewed"):
        await driver(store)._leased(1, "lease", work())
    assert not finished and time.monotonic() - started < 2.0
