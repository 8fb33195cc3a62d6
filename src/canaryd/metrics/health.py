"""Health checks of application instances: one HTTP GET, judged by its status, never raising."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class HealthResult:
    """One health check: `ok` for a 2xx answer; `status` is None when no answer came; `detail` says why."""

    ok: bool
    status: int | None
    detail: str
    latency_ms: float


def health_url(host: str, port: int, path: str) -> str:
    """`http://host:port/path`, with IPv6 addresses in brackets."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        if ipaddress.ip_address(bare).version == 6:
            host = f"[{bare}]"
    except ValueError:
        pass
    if not path.startswith("/"):
        path = "/" + path
    return f"http://{host}:{port}{path}"


async def check_health(
    client: httpx.AsyncClient, host: str, port: int, path: str, timeout: float
) -> HealthResult:
    """GETs the health endpoint. Healthy means a 2xx within `timeout` seconds (the whole exchange, not each
    step); timeouts, refused connections and protocol errors give a failed result with the reason."""
    url = health_url(host, port, path)
    started = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000.0, 3)

    try:
        async with asyncio.timeout(timeout):
            response = await client.get(url, timeout=timeout, follow_redirects=False)
    except (TimeoutError, httpx.TimeoutException):
        return HealthResult(False, None, f"no answer from {url} within {timeout:g} s", elapsed())
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        return HealthResult(False, None, f"{url}: {reason}", elapsed())
    status = response.status_code
    if 200 <= status < 300:
        return HealthResult(True, status, f"{url} answered {status}", elapsed())
    return HealthResult(
        False, status, f"{url} answered {status} {response.reason_phrase}".rstrip(), elapsed()
    )


__all__ = ["HealthResult", "check_health", "health_url"]
