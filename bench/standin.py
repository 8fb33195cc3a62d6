"""A stand-in for the outside world that does no I/O, for bench/scale.py ONLY.

It implements the engine's `Outside` port (proxy, transports, health checks, host loads) in memory, so that a
benchmark measures canaryd itself (database, queue, engine) rather than nginx or SSH. It lives under bench/,
is not importable from `canaryd`, and no setting selects it: a production worker never runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from canaryd.db.models import Application, Server
from canaryd.domain.config import PrometheusSource
from canaryd.domain.types import Cohort, CohortStats, HostLoad, bucket_of
from canaryd.metrics.health import HealthResult
from canaryd.metrics.prometheus import CohortQuery
from canaryd.proxies.base import RouteTable, TrafficReading
from canaryd.transports.base import CommandResult

#: Requests per cohort and tick the stand-in proxy reports (a healthy canary: no errors, 5 ms).
REQUESTS_PER_TICK = 300
BUCKET_5MS = bucket_of(5.0)


class NullProxy:
    """Serves whatever it is given, at once; reports a steady, healthy trickle of traffic."""

    async def apply(self, table: RouteTable) -> None:
        return None

    async def verify(self, table: RouteTable) -> bool:
        return True

    async def check(self, table: RouteTable) -> bool:
        return True

    async def remove(self, app_id: int) -> None:
        return None

    async def verify_removed(self, app_id: int) -> bool:
        return True

    async def traffic_offset(self) -> int:
        return 0

    async def read_traffic(
        self, offset: int, cohort_of: Callable[[str], Cohort | None], since: float | None = None
    ) -> TrafficReading:
        def stats() -> CohortStats:
            return CohortStats(REQUESTS_PER_TICK, 0, {BUCKET_5MS: REQUESTS_PER_TICK})

        return TrafficReading({"canary": stats(), "stable": stats()}, offset + 2 * REQUESTS_PER_TICK)


class NullTransport:
    """Every command succeeds at once; files are not used by the null proxy."""

    async def run(self, command: str, timeout: float) -> CommandResult:
        return CommandResult(0, "", "")

    async def read_file(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        return b""

    async def file_size(self, path: str) -> int | None:
        return 0

    async def write_file(self, path: str, data: bytes) -> None:
        return None

    async def rename(self, src: str, dst: str) -> None:
        return None

    async def remove(self, path: str) -> None:
        return None

    async def unix_request(self, path: str, payload: bytes, timeout: float) -> bytes:
        return b""


class NullOutside:
    """The `Outside` port with no I/O: healthy servers with equal loads, a proxy that serves at once."""

    def __init__(self) -> None:
        self._proxy, self._transport = NullProxy(), NullTransport()

    def proxy(self, app: Application, proxy_server: Server) -> NullProxy:
        return self._proxy

    def transport(self, server: Server) -> NullTransport:
        return self._transport

    async def health(self, host: str, port: int, path: str) -> HealthResult:
        return HealthResult(True, 200, "ok", 1.0)

    async def host_load(self, server: Server) -> HostLoad:
        return HostLoad(10.0, 20.0)

    async def source(
        self, source: PrometheusSource, cohorts: Sequence[CohortQuery], window_s: int
    ) -> dict[Cohort, CohortStats]:
        return {q.cohort: CohortStats() for q in cohorts}
