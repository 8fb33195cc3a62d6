"""Group commit: requests that arrive while a batch is in flight go together as the next batch.

A tick's two transactions (take the lease and load; record the plan) cost mostly round trips to the
database, not work. Many ticks due at about the same time each submit their request here; the first one runs
at once (no added latency when the worker is idle), and whatever queues up meanwhile runs as one transaction
for all of them (docs/design.md, "Batched ticks").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


class Batcher(Generic[Req, Res]):
    """Runs submitted requests in batches of at most `max_size` through `run`, one batch at a time.

    `run` returns one outcome per request, in order (an exception for a request that failed alone). When `run`
    itself raises for a batch of several, each request is run again on its own, so that one request's fault
    (a bug, a constraint) never fails the others; a single request's exception goes to its caller."""

    def __init__(
        self, run: Callable[[Sequence[Req]], Awaitable[Sequence[Res | BaseException]]], max_size: int
    ) -> None:
        self._run, self._max_size = run, max_size
        self._queue: list[tuple[Req, asyncio.Future[Res]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, request: Req) -> Res:
        future: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def submit_many(self, requests: Sequence[Req]) -> list[Res]:
        """Several requests that go in the same batch, in order (unless it is full)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Res]] = [loop.create_future() for _ in requests]
        self._queue += zip(requests, futures, strict=True)
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        batch: list[tuple[Req, asyncio.Future[Res]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_size], self._queue[self._max_size :]
                # A caller cancelled meanwhile (its lease was lost) gets nothing written for it.
                batch = [(request, future) for request, future in batch if not future.done()]
                if batch:
                    await self._settle(batch)
        except BaseException:  # cancelled (the loop is closing): nobody may wait for an answer forever
            for _, future in (*batch, *self._queue):
                future.cancel()
            self._queue = []
            raise
        finally:
            self._draining = None

    async def _settle(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        outcomes: Sequence[Res | BaseException]
        try:
            outcomes = await self._run([request for request, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                outcomes = [exc]
            else:
                for one in batch:
                    await self._settle([one])
                return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


__all__ = ["Batcher"]
