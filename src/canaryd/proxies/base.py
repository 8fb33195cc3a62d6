"""The seam between the engine and a reverse proxy: apply a route table, prove it is live, report traffic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from canaryd.domain.types import Backend, Cohort, CohortStats


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Everything the proxy needs to route one application: rendered whole on every change (idempotent)."""

    app_id: int
    app_name: str
    backends: tuple[Backend, ...]  # at least one; weights already computed by domain.split
    generation: int  # increases with every change; lets verify() tell the new config from the old


class ProxyConfigError(Exception):
    """The proxy refused the configuration (its test command failed); the old configuration stays."""


class ProxyUnavailableError(Exception):
    """The proxy or its host could not be reached; nothing is known to have changed."""


@dataclass(frozen=True, slots=True)
class TrafficReading:
    """Traffic per cohort read since `offset`; `next_offset` is where the next read starts."""

    cohorts: dict[Cohort, CohortStats]
    next_offset: int


class Proxy(Protocol):
    """One proxy kind (nginx, haproxy, traefik) bound to one application's proxy settings."""

    async def apply(self, table: RouteTable) -> None:
        """Render, test, install atomically and load `table`. Raises ProxyConfigError or ProxyUnavailableError."""
        ...

    async def verify(self, table: RouteTable) -> bool:
        """True once the proxy serves `table` (its generation), False if it still serves an older one."""
        ...

    async def remove(self, app_id: int) -> None:
        """Takes the application's configuration out of the proxy (its file deleted, the proxy tested and
        reloaded as for apply). On any failure the previous file is put back and the error raised
        (ProxyConfigError or ProxyUnavailableError). Removing what is not there succeeds."""
        ...

    async def verify_removed(self, app_id: int) -> bool:
        """True once the proxy no longer serves the application (polled, like verify); False on timeout."""
        ...

    async def check(self, table: RouteTable) -> bool:
        """A quick look (one request) whether the proxy still serves `table`; False makes the engine
        re-assert it (a proxy restarted from other files, runtime weights lost)."""
        ...

    async def traffic_offset(self) -> int:
        """The offset at which traffic from now on starts (the end of the log so far)."""
        ...

    async def read_traffic(
        self, offset: int, cohort_of: Callable[[str], Cohort | None], since: float | None = None
    ) -> TrafficReading:
        """Per-cohort requests since `offset`. `cohort_of` maps an upstream 'host:port' to its cohort. Requests
        logged before `since` (epoch seconds; the current stage's start) are skipped where the source has
        timestamps: they were routed by an earlier split."""
        ...
