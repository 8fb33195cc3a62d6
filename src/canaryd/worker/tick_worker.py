"""`canaryd worker`: pops due ticks from Redis in batches and runs them, plus the reconciler and the webhook
outbox.

One loop per worker: take up to the free room of due ticks off the sorted set in one atomic step
(engine/scheduler.RedisScheduler.pop_due), start each as a task, repeat; when nothing more is due, wait
POLL_DELAY_SECONDS, or less when a tick is scheduled for now (RedisScheduler.wait_for_due). Ticks in
flight that reach the database together share its transactions (engine/batch.py). A busy tick (another holds the lease) goes back on the queue BUSY_RETRY_SECONDS later,
under the same token; a tick the database did not answer is run again by the same worker every
DATABASE_RETRY_SECONDS (it takes back its own lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import start_http_server
from redis.exceptions import RedisError

from canaryd.engine.driver import RolloutDriver
from canaryd.engine.scheduler import (
    DATABASE_RETRY_SECONDS,
    DatabaseUnavailableError,
    RedisScheduler,
    deployment_of,
)
from canaryd.gctune import tune_gc
from canaryd.runtime import Runtime, open_runtime
from canaryd.settings import Settings

log = logging.getLogger(__name__)

#: A busy deployment (another tick holds its lease) is retried this often.
BUSY_RETRY_SECONDS = 0.5
#: How long a worker waits before looking again when no tick was due: the floor of tick lag for ticks due
#: later; a tick due at once wakes the worker (scheduler.WAKE_KEY). Each look is one Lua call on Redis.
POLL_DELAY_SECONDS = 0.1
#: Ticks a worker runs side by side. Ticks that reach the database together share its transactions
#: (engine/batch.py), so more of them in flight means fewer round trips per tick, not more connections.
#: At 10,000 deployments one worker ran 309-322 ticks/s with 100, 341-345 with 200-250; 500 made each tick
#: wait behind more in flight (docs/benchmarks.md, controller scale).
MAX_JOBS = 250
#: Longest wait between attempts to reach Redis again after it was lost.
MAX_REDIS_BACKOFF_SECONDS = 30.0
#: How long a stopping worker lets its ticks in flight finish before cancelling them (a cancelled tick's
#: deployment is taken over once its lease expires).
STOP_GRACE_SECONDS = 10.0


class TickWorker:
    """A worker process's loop. `make_driver` builds the driver over the runtime (benchmarks give it a
    stand-in outside); `burst` returns once nothing is due and nothing runs (tests)."""

    def __init__(
        self,
        settings: Settings,
        *,
        burst: bool = False,
        make_driver: Callable[[Runtime], RolloutDriver] = Runtime.driver,
    ) -> None:
        assert settings.redis_url, "canaryd worker needs CANARYD_REDIS_URL"
        self.settings, self.burst, self.make_driver = settings, burst, make_driver
        self.handle_signals = True
        self.tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = False

    async def async_run(self) -> None:
        """Runs until close() or a signal (SIGINT, SIGTERM when handle_signals)."""
        self._started = True
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stopping.set)
        try:
            async with contextlib.AsyncExitStack() as stack:
                rt = await stack.enter_async_context(open_runtime(self.settings, "worker"))
                if self.settings.worker_metrics_port is not None:  # its own /metrics (ticks, proxies)
                    server, _ = start_http_server(
                        self.settings.worker_metrics_port,
                        self.settings.worker_metrics_host,
                        registry=rt.metrics.registry,
                    )
                    stack.callback(server.server_close)  # callbacks run last-first: shutdown, then close
                    stack.callback(server.shutdown)
                for background in (rt.reconcile_forever(), rt.outbox().run_forever()):
                    task = asyncio.create_task(background)
                    stack.push_async_callback(cancel, task)
                assert isinstance(rt.scheduler, RedisScheduler)
                driver = self.make_driver(rt)
                if self.handle_signals:  # the worker owns its process (not a test's worker)
                    tune_gc()
                await self._loop(rt.scheduler, driver)
                await self._finish_in_flight()
        finally:
            self._stopped.set()

    async def close(self) -> None:
        """Stops taking ticks, lets those in flight finish (at most STOP_GRACE_SECONDS), closes the runtime."""
        self._stopping.set()
        if self._started:
            await self._stopped.wait()

    async def _loop(self, queue: RedisScheduler, driver: RolloutDriver) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            room = MAX_JOBS - len(self.tasks)
            if room <= 0:
                await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                tokens = await queue.pop_due(datetime.now(UTC), room)
            except (RedisError, OSError) as exc:
                # Ticks in flight need the database, not Redis; the reconciler re-schedules what the lost
                # Redis held once it is back.
                log.warning("cannot reach Redis (%s); trying again in %g s", exc, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_REDIS_BACKOFF_SECONDS)
                continue
            backoff = 1.0
            for token in tokens:
                task = asyncio.create_task(self._tick(queue, driver, token), name=token)
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            if self.burst and not tokens and not self.tasks:
                return
            if len(tokens) < room:  # nothing more is due now
                await self._idle(queue)

    async def _idle(self, queue: RedisScheduler) -> None:
        """Waits POLL_DELAY_SECONDS, or less when a tick is scheduled for now or the worker stops."""
        if self._stopping.is_set():
            return
        try:
            await queue.wait_for_due(POLL_DELAY_SECONDS)
        except (RedisError, OSError):
            await self._pause(POLL_DELAY_SECONDS)  # the next pop_due reports it and backs off

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _tick(self, queue: RedisScheduler, driver: RolloutDriver, token: str) -> None:
        deployment_id = deployment_of(token)
        while True:
            try:
                if await driver.tick(deployment_id, token):
                    return
                break
            except DatabaseUnavailableError as exc:
                # Retried here, not through the shared queue: only this worker knows the lease its cut-short
                # attempt still holds, and taking that lease back lets the retry start at once.
                log.warning("%s; trying again in %.0f s", exc, DATABASE_RETRY_SECONDS)
                await asyncio.sleep(DATABASE_RETRY_SECONDS)
            except (RedisError, OSError) as exc:
                # Recorded, but its events were not published or its next tick not queued: the reconciler
                # schedules it again once it is overdue.
                log.warning(
                    "deployment %s: Redis did not take its messages or next tick (%s)", deployment_id, exc
                )
                return
            except Exception:  # a bug: the reconciler picks the deployment up again
                log.exception("tick of deployment %s failed", deployment_id)
                return
        try:  # busy: another tick holds the lease; any worker may try again shortly
            await queue.schedule(
                deployment_id, token, datetime.now(UTC) + timedelta(seconds=BUSY_RETRY_SECONDS)
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "deployment %s: cannot re-queue its tick (%s); the reconciler will", deployment_id, exc
            )

    async def _finish_in_flight(self) -> None:
        if not self.tasks:
            return
        _, late = await asyncio.wait(self.tasks, timeout=STOP_GRACE_SECONDS)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_worker(settings: Settings, *, burst: bool = False) -> TickWorker:
    return TickWorker(settings, burst=burst)


async def run_worker(settings: Settings) -> None:
    """Runs a worker until a signal stops it. Losing Redis does not stop it: it keeps trying, with backoff,
    and its ticks in flight finish meanwhile."""
    await make_worker(settings).async_run()
