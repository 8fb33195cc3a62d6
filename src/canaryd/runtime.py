"""Everything a process needs, created once at start-up from the settings and passed down (no globals)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from canaryd.db.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from canaryd.db.latest_seq import LatestSeqs
from canaryd.engine.bus import EventBus, LocalBus, RedisBus
from canaryd.engine.driver import LeaseTerms, RolloutDriver
from canaryd.engine.locks import DeploymentLocks
from canaryd.engine.outbox import DeliveryTerms, Outbox
from canaryd.engine.ports import Clock, RealOutside, SystemClock
from canaryd.engine.reconcile import reconcile
from canaryd.engine.scheduler import LocalScheduler, RedisScheduler, TickScheduler
from canaryd.engine.store import RolloutStore
from canaryd.observability import Metrics
from canaryd.proxies.nginx_workers import KnownMasters
from canaryd.settings import Settings
from canaryd.transports.factory import TransportFactory
from canaryd.transports.ssh import SshPool

log = logging.getLogger(__name__)

Role = Literal["api", "worker", "embedded", "cli"]


@dataclass
class Runtime:
    settings: Settings
    db_engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    locks: DeploymentLocks
    bus: EventBus
    scheduler: TickScheduler
    transports: TransportFactory
    http: httpx.AsyncClient
    metrics: Metrics
    #: Names this process in leases, so a stuck lease can be traced to its owner.
    owner: str
    clock: Clock

    @functools.cached_property
    def read_sessions(self) -> async_sessionmaker[AsyncSession]:
        """Sessions for reads that change nothing (status reads, the live view); never committed."""
        return make_read_sessionmaker(self.db_engine)

    @functools.cached_property
    def nginx_masters(self) -> KnownMasters:
        """nginx masters found at earlier changes, shared by the proxy adapters this process builds."""
        return KnownMasters()

    @functools.cached_property
    def latest_seqs(self) -> LatestSeqs:
        """Each deployment's newest event seq, one read shared by this process's live streams."""
        return LatestSeqs()

    @property
    def settings_bootstrap_hash(self) -> str | None:
        """sha256 of CANARYD_BOOTSTRAP_TOKEN (as tokens are stored), compared in constant time."""
        token = self.settings.bootstrap_token
        return hashlib.sha256(token.encode()).hexdigest() if token else None

    @property
    def store(self) -> RolloutStore:
        return RolloutStore(self.sessions, self.locks)

    async def reconcile(self, grace_seconds: float) -> int:
        """Re-schedules overdue deployments now (see engine/reconcile.py)."""
        scheduled = await reconcile(self.sessions, self.locks, self.scheduler, self.clock, grace_seconds)
        if scheduled:
            self.metrics.reconciled_ticks(scheduled)
        return scheduled

    async def reconcile_forever(self) -> None:
        """Re-schedules overdue deployments every reconcile_interval until cancelled."""
        interval = self.settings.reconcile_interval
        while True:
            try:
                await self.reconcile(grace_seconds=interval)
            except Exception:
                log.exception("reconcile failed; trying again in %s s", interval)
            await asyncio.sleep(interval)

    def outbox(self) -> Outbox:
        """The webhook delivery loop over this process's clients (docs/notifications.md)."""
        s = self.settings
        terms = DeliveryTerms(
            s.webhook_timeout,
            s.webhook_max_attempts,
            s.webhook_backoff,
            s.webhook_backoff_max,
            s.webhook_poll_interval,
            s.webhook_retention_days,
        )
        return Outbox(self.sessions, self.http, self.clock, self.metrics, terms, self.owner)

    def driver(self) -> RolloutDriver:
        """The rollout driver over this process's clients."""
        outside = RealOutside(
            self.transports, self.http, self.settings.health_check_timeout, self.nginx_masters
        )
        terms = LeaseTerms(self.settings.lease_seconds, self.settings.max_retry_backoff)
        return RolloutDriver(
            self.store, outside, self.clock, self.bus, self.scheduler, self.metrics, terms, self.owner
        )


@asynccontextmanager
async def open_runtime(settings: Settings, role: Role) -> AsyncIterator[Runtime]:
    """Creates the clients; closes them on exit."""
    engine = make_engine(settings.database_url)
    ssh_pool = (
        SshPool(settings.ssh_known_hosts, settings.ssh_client_keys or None, settings.ssh_connect_timeout)
        if settings.ssh_known_hosts
        else None
    )
    transports = TransportFactory(ssh_pool)
    # An idle connection is reused for 1 s only: bursts (proxy polls, a batch of webhook deliveries) still share one, while
    # a periodic health check opens its own, so it never races an app server closing its idle connection
    # (uvicorn and Node after 5 s, gunicorn after 2 s) and reads that reset as an unhealthy canary.
    http = httpx.AsyncClient(
        timeout=settings.health_check_timeout,
        trust_env=False,
        limits=httpx.Limits(keepalive_expiry=1.0),
    )
    bus: EventBus
    scheduler: TickScheduler
    if settings.embedded:
        bus, scheduler = LocalBus(), LocalScheduler()
    else:
        from redis.asyncio import Redis

        assert settings.redis_url is not None
        bus = RedisBus(Redis.from_url(settings.redis_url))
        scheduler = RedisScheduler(Redis.from_url(settings.redis_url))
    runtime = Runtime(
        settings=settings,
        db_engine=engine,
        sessions=make_sessionmaker(engine),
        locks=DeploymentLocks(process_local=settings.is_sqlite),
        bus=bus,
        scheduler=scheduler,
        transports=transports,
        http=http,
        metrics=Metrics(),
        owner=f"{role}:{socket.gethostname()}:{os.getpid()}",
        clock=SystemClock(),
    )
    try:
        yield runtime
    finally:
        await scheduler.close()
        await bus.close()
        await http.aclose()
        await transports.close()
        await engine.dispose()
