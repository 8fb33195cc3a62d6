"""Changing what a proxy serves without ever leaving it half-changed: the new table is applied and proven
live, or the last table proven live is put back (and proven again)."""

from __future__ import annotations

import logging
import time

from canaryd.proxies.base import Proxy, ProxyConfigError, ProxyUnavailableError, RouteTable
from canaryd.transports.base import TransportError

logger = logging.getLogger(__name__)

#: What a proxy step fails with (a refused configuration, an unreachable proxy, a lost transport).
PROXY_ERRORS = (ProxyConfigError, ProxyUnavailableError, TransportError)


class NotServedError(ProxyUnavailableError):
    """The proxy accepted the configuration but was never seen serving it."""


async def switch(proxy: Proxy, table: RouteTable, last: RouteTable | None, attempts: int = 3) -> float:
    """Applies `table` and waits until the proxy serves it; returns milliseconds from the call until then.

    On any failure (refused, unreachable, never served, cancelled) the proxy is brought back to `last`, the
    table last proven live (re-applied and verified), or, when there is none (a registration), the
    application is taken out of the proxy; then the error is raised. Putting back is best effort: a proxy
    that cannot be reached at all keeps whatever it has, and the engine's next check re-asserts."""
    started = time.perf_counter()
    try:
        for _ in range(attempts):
            await proxy.apply(table)
            if await proxy.verify(table):
                return round((time.perf_counter() - started) * 1000, 1)
        raise NotServedError(
            f"the proxy did not serve configuration generation {table.generation} after {attempts} attempts"
        )
    except BaseException:
        await restore(proxy, table.app_id, last)
        raise


async def restore(proxy: Proxy, app_id: int, last: RouteTable | None) -> bool:
    """Brings the proxy back to `last` (or takes the application out when None); True when proven."""
    try:
        if last is None:
            await proxy.remove(app_id)
            if await proxy.verify_removed(app_id):
                return True
        else:
            await proxy.apply(last)
            if await proxy.verify(last):
                return True
        logger.error("application %d: the proxy was not seen back at its last configuration", app_id)
    except PROXY_ERRORS as exc:
        logger.error("application %d: could not put the proxy's last configuration back: %s", app_id, exc)
    return False
