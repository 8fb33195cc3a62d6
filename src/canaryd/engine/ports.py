"""The outside world as the engine reaches it, and the clock it reads. Production wires the real adapters
(`RealOutside`, `SystemClock`); the engine's fast tests wire in-memory ones of the same shape."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import httpx

from canaryd.db.models import Application, Server
from canaryd.domain.config import PrometheusSource
from canaryd.domain.types import Cohort, CohortStats, HostLoad
from canaryd.engine.checks import CheckAnswer, CheckRequest, post_check
from canaryd.engine.proxies import make_proxy
from canaryd.metrics.health import HealthResult, check_health
from canaryd.metrics.host import read_host_load
from canaryd.metrics.prometheus import CohortQuery, PrometheusReader
from canaryd.proxies.base import Proxy
from canaryd.proxies.nginx_workers import KnownMasters
from canaryd.transports.base import Transport, TransportError
from canaryd.transports.factory import TransportFactory

#: Longest wait for one server's host load; a server that does not answer counts as unknown load.
HOST_LOAD_TIMEOUT_SECONDS = 10.0


class Clock(Protocol):
    def now(self) -> datetime:
        """The time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Outside(Protocol):
    """Proxies, servers, health endpoints, metric sources and webhook checks."""

    def proxy(self, app: Application, proxy_server: Server) -> Proxy: ...

    def transport(self, server: Server) -> Transport: ...

    async def health(self, host: str, port: int, path: str) -> HealthResult: ...

    async def host_load(self, server: Server) -> HostLoad: ...

    async def source(
        self, source: PrometheusSource, cohorts: Sequence[CohortQuery], window_s: int
    ) -> dict[Cohort, CohortStats]:
        """Raises MetricSourceError when the source cannot answer."""
        ...

    async def call_check(self, request: CheckRequest) -> CheckAnswer:
        """POSTs a webhook check; a failure to answer is an answer (status None), never an exception."""
        ...


class RealOutside:
    def __init__(
        self,
        transports: TransportFactory,
        http: httpx.AsyncClient,
        health_timeout: float,
        nginx_masters: KnownMasters,
    ) -> None:
        self.transports = transports
        self.http = http
        self.health_timeout = health_timeout
        self.nginx_masters = nginx_masters

    def proxy(self, app: Application, proxy_server: Server) -> Proxy:
        return make_proxy(app, proxy_server, self.transports, self.http, self.nginx_masters)

    def transport(self, server: Server) -> Transport:
        return self.transports.for_server(server.transport, server.host, server.ssh_port, server.ssh_user)

    async def health(self, host: str, port: int, path: str) -> HealthResult:
        return await check_health(self.http, host, port, path, self.health_timeout)

    async def host_load(self, server: Server) -> HostLoad:
        try:
            return await asyncio.wait_for(
                read_host_load(self.transport(server)), timeout=HOST_LOAD_TIMEOUT_SECONDS
            )
        except (TransportError, TimeoutError):
            return HostLoad(None, None)

    async def source(
        self, source: PrometheusSource, cohorts: Sequence[CohortQuery], window_s: int
    ) -> dict[Cohort, CohortStats]:
        return await PrometheusReader(self.http, source).read(cohorts, window_s)

    async def call_check(self, request: CheckRequest) -> CheckAnswer:
        return await post_check(self.http, request)


__all__ = ["Clock", "Outside", "RealOutside", "SystemClock"]
