"""One tick of a deployment: take its lease, re-assert the proxy, observe, decide, carry out, record.

A tick is idempotent: it re-renders the proxy state the database asks for first (a no-op when the proxy
already serves it), then does at most one unit of work. Every decision is `domain.rollout.decide`'s; this
module only moves data between the database, the outside world and that function.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from asyncpg.exceptions import OperatorInterventionError, PostgresConnectionError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from canaryd.domain.lifecycle import ACTIVE_STATES
from canaryd.domain.plan import Plan, StepFailed
from canaryd.domain.rollout import decide, needs_of
from canaryd.domain.routing import routes
from canaryd.engine.bus import EventBus
from canaryd.engine.checks import CheckRefusedError
from canaryd.engine.interpreter import DeployError, Interpreter
from canaryd.engine.ports import Clock, Outside
from canaryd.engine.scheduler import DatabaseUnavailableError, TickScheduler
from canaryd.engine.store import Acquired, Committed, LeaseLost, Loaded, RolloutStore, lease_id
from canaryd.observability import Metrics, record_events
from canaryd.proxies.base import ProxyConfigError, ProxyUnavailableError
from canaryd.transports.base import TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Interrupted attempts remembered at most (an outage with more deployments than this waits for their leases).
MAX_INTERRUPTED = 10_000

#: Failures of the outside world, handled by retry or rollback; anything else is a bug and logged as one.
EXPECTED_FAILURES = (
    DeployError,
    TransportError,
    ProxyConfigError,
    ProxyUnavailableError,
    TimeoutError,
    OSError,
)


def failure_of(exc: BaseException) -> StepFailed:
    """A deploy that failed, a configuration the proxy refused or a server that refuses us for good will
    fail the same way again; anything else (unreachable, timed out, or a bug of canaryd's own) is retried
    first, so that a passing glitch or a canaryd bug is not mistaken for a bad canary."""
    permanent = isinstance(exc, DeployError | ProxyConfigError) or bool(getattr(exc, "permanent", False))
    reason = str(exc) if isinstance(exc, EXPECTED_FAILURES) else f"{type(exc).__name__}: {exc}"
    return StepFailed(reason, permanent)


#: PostgreSQL's SQLSTATEs for a server that is going away or not yet back: admin_shutdown, crash_shutdown,
#: cannot_connect_now ("the database system is shutting down / starting up"). Class 08 is a lost connection.
SERVER_GONE_STATES = frozenset({"57P01", "57P02", "57P03"})


def database_down(exc: BaseException) -> bool:
    """Whether `exc` says the database did not answer (not that a statement was wrong): a refused or lost
    connection (asyncpg's refusal comes through unwrapped), a server shutting down or starting up (asyncpg
    raises those at connect time, reaching us as a DBAPIError or as the driver adapter's bare `Error`, with
    the SQLSTATE or asyncpg's own error as the cause), or SQLite's "database is locked"."""
    if isinstance(exc, OperationalError | InterfaceError | ConnectionError):
        return True
    if isinstance(exc, OperatorInterventionError | PostgresConnectionError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    sqlstate = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    if sqlstate.startswith("08") or sqlstate in SERVER_GONE_STATES:
        return True
    cause = exc.__cause__
    return cause is not None and cause is not exc and database_down(cause)


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    seconds: float
    #: Cap of the retry backoff, seconds.
    max_backoff: float


async def announce(
    bus: EventBus, scheduler: TickScheduler, metrics: Metrics, deployment_id: int, done: Committed
) -> None:
    """Logs and counts a write's decisions, publishes its events and status, then schedules its tick
    (always after the commit)."""
    record_events(metrics, done.application_id, [m for m in done.messages if m.get("type") == "event"])
    if done.messages:
        await bus.publish_many(deployment_id, done.messages)
    if done.schedule is not None:
        await scheduler.schedule(deployment_id, *done.schedule)


class RolloutDriver:
    """Runs ticks: the thin loop around the decision function."""

    def __init__(
        self,
        store: RolloutStore,
        outside: Outside,
        clock: Clock,
        bus: EventBus,
        scheduler: TickScheduler,
        metrics: Metrics,
        terms: LeaseTerms,
        owner: str,
    ) -> None:
        self.store, self.outside, self.clock = store, outside, clock
        self.bus, self.scheduler, self.metrics = bus, scheduler, metrics
        self.terms, self.owner = terms, owner
        #: (deployment, token) -> the lease of an attempt the database cut short (tick() takes it again).
        self._interrupted: dict[tuple[int, str], str] = {}

    async def tick(self, deployment_id: int, token: str) -> bool:
        """Runs the tick `token` of a deployment. False if another tick holds the lease (try again soon).
        Raises DatabaseUnavailableError when the database does not answer (run it again shortly)."""
        # An attempt of this tick that the database cut short still holds its lease: taking the same lease
        # again lets the retry start at once instead of after the lease runs out.
        lease, now = (
            self._interrupted.pop((deployment_id, token), None) or lease_id(self.owner),
            self.clock.now(),
        )
        until = now + timedelta(seconds=self.terms.seconds)
        try:
            got = await self.store.take(deployment_id, token, lease, now, until, self.terms.max_backoff)
            if isinstance(got, Acquired):
                return got is Acquired.STALE  # a stale tick is simply done
            done = await self._leased(deployment_id, lease, self._run(deployment_id, lease, got, now))
        except LeaseLost as exc:
            log.warning("%s; another worker carries the deployment on", exc)
            return True
        except Exception as exc:
            if not database_down(exc):
                raise
            if len(self._interrupted) < MAX_INTERRUPTED:
                self._interrupted[deployment_id, token] = lease
            raise DatabaseUnavailableError(
                f"deployment {deployment_id}: the database is unavailable ({type(exc).__name__}: {exc})"
            ) from exc
        await announce(self.bus, self.scheduler, self.metrics, deployment_id, done)
        return True

    async def _run(self, deployment_id: int, lease: str, loaded: Loaded, started: datetime) -> Committed:
        s = loaded.snapshot
        if loaded.due is not None:
            self.metrics.tick_started((self.clock.now() - loaded.due).total_seconds())
        proxy = self.outside.proxy(loaded.app, loaded.proxy_server)
        io = Interpreter(loaded, proxy, self.outside, self.clock, self.store, lease, self.metrics)
        plan = Plan()
        try:
            if s.state in ACTIVE_STATES:
                await io.set_routes(routes(s))
            observed = await io.observe(needs_of(s, self.clock.now()))
            plan = decide(s, observed, self.clock.now())
            await io.carry_out(plan.effects)
        except CheckRefusedError as exc:  # a webhook check held the gate: not a failed step
            plan = self._failed(plan, decide(s, exc.signal, self.clock.now()))
        except EXPECTED_FAILURES as exc:
            log.warning("deployment %s: %s", deployment_id, exc)
            self.metrics.step_failed()
            plan = self._failed(plan, decide(s, failure_of(exc), self.clock.now()))
        except Exception as exc:  # a bug: record it and keep the deployment moving
            log.exception("tick of deployment %s failed", deployment_id)
            self.metrics.tick_error()
            plan = self._failed(plan, decide(s, failure_of(exc), self.clock.now()))
        facts = replace(
            plan.facts,
            events=(*io.events, *plan.facts.events),
            log_offset=io.log_offset if io.log_offset is not None else plan.facts.log_offset,
        )
        done = await self.store.commit(
            deployment_id,
            lease,
            loaded.state_version,
            facts,
            plan.change,
            io.proxy_facts(),
            self.clock.now(),
            loaded.servers,
            started,
            loaded.row,
        )
        return replace(done, messages=[*io.published, *done.messages])

    @staticmethod
    def _failed(attempted: Plan, failure: Plan) -> Plan:
        """Keeps what was learned before the failure, drops the decision, adds the failure's plan."""
        learned, failed = attempted.facts, failure.facts
        facts = replace(
            learned,
            attempts=failed.attempts,
            events=(*learned.events, *failed.events),
            checks=failed.checks if failed.checks is not None else learned.checks,
        )
        return Plan(facts=facts, change=failure.change)

    async def _leased(self, deployment_id: int, lease: str, work: Coroutine[Any, Any, T]) -> T:
        """Runs `work` while renewing the lease; stops it before another worker may take the lease over."""
        task = asyncio.ensure_future(work)
        lost = asyncio.Event()
        loop = asyncio.get_running_loop()
        taken = loop.time()
        beat: asyncio.Task[None] | None = None

        def start_beat() -> None:
            nonlocal beat
            beat = asyncio.create_task(self._heartbeat(deployment_id, lease, task, lost, taken))

        # The heartbeat starts when the first renewal is due: almost every tick has ended by then, and a
        # task per tick that only slept and was cancelled cost ~2 % of a worker's CPU.
        timer = loop.call_later(self.terms.seconds / 3, start_beat)
        try:
            return await task
        except asyncio.CancelledError:
            if lost.is_set():
                raise LeaseLost(f"deployment {deployment_id}: lease {lease} could not be renewed") from None
            raise
        finally:
            timer.cancel()
            if beat is not None:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat

    async def _heartbeat(
        self,
        deployment_id: int,
        lease: str,
        task: asyncio.Future[Any],
        lost: asyncio.Event,
        renewed: float,
    ) -> None:
        """Renews the lease at once, then every third of its length (real time); `renewed` is when it was
        taken. When it is taken over, or cannot be renewed for two thirds of its length, the tick is
        stopped: it can no longer be sure it is alone."""
        loop = asyncio.get_running_loop()
        seconds = self.terms.seconds
        while True:
            try:
                held: bool | None = await self.store.renew(
                    deployment_id, lease, self.clock.now() + timedelta(seconds=seconds)
                )
            except (OperationalError, DBAPIError, OSError) as exc:
                log.warning("deployment %s: cannot renew the lease: %s", deployment_id, exc)
                held = None
            if held:
                renewed = loop.time()
            elif held is False or loop.time() - renewed > seconds * 2 / 3:
                log.warning("deployment %s: lease %s lost; stopping the tick", deployment_id, lease)
                lost.set()
                task.cancel()
                return
            await asyncio.sleep(seconds / 3)


__all__ = ["EXPECTED_FAILURES", "LeaseTerms", "RolloutDriver", "announce", "database_down", "failure_of"]
