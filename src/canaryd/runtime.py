"""Everything a process needs, created once at start-up from the settings and passed down (no globals)."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from canaryd.db.engine import make_engine, make_sessionmaker
from canaryd.engine.bus import EventBus, LocalBus, RedisBus
from canaryd.engine.locks import DeploymentLocks
from canaryd.observability import Metrics
from canaryd.services.tokens import hash_token
from canaryd.settings import Settings
from canaryd.transports.factory import TransportFactory
from canaryd.transports.ssh import SshPool
from canaryd.worker.scheduler import ArqScheduler, LocalScheduler, TickScheduler

Role = Literal["api", "worker", "embedded", "cli"]


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    locks: DeploymentLocks
    bus: EventBus
    scheduler: TickScheduler
    transports: TransportFactory
    http: httpx.AsyncClient
    metrics: Metrics
    #: Names this process in leases, so a stuck lease can be traced to its owner.
    owner: str

    @property
    def settings_bootstrap_hash(self) -> str | None:
        """sha256 of CANARYD_BOOTSTRAP_TOKEN, so the token itself is compared in constant time."""
        return hash_token(self.settings.bootstrap_token) if self.settings.bootstrap_token else None

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease_seconds)


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
    http = httpx.AsyncClient(timeout=settings.health_check_timeout, trust_env=False)
    bus: EventBus
    scheduler: TickScheduler
    if settings.embedded:
        bus, scheduler = LocalBus(), LocalScheduler()
    else:
        from arq import create_pool
        from arq.connections import RedisSettings
        from redis.asyncio import Redis

        assert settings.redis_url is not None
        bus = RedisBus(Redis.from_url(settings.redis_url))
        scheduler = ArqScheduler(await create_pool(RedisSettings.from_dsn(settings.redis_url)))
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        locks=DeploymentLocks(process_local=settings.is_sqlite),
        bus=bus,
        scheduler=scheduler,
        transports=transports,
        http=http,
        metrics=Metrics(),
        owner=f"{role}:{socket.gethostname()}:{os.getpid()}",
    )
    try:
        yield runtime
    finally:
        await scheduler.close()
        await bus.close()
        await http.aclose()
        await transports.close()
        await engine.dispose()
