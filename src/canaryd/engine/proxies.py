"""Builds the proxy adapter for an application and keeps the proxy in line with the database."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from canaryd.db.models import Application, Server
from canaryd.domain.config import ProxySpec
from canaryd.domain.types import Backend
from canaryd.proxies.base import Proxy, ProxyUnavailableError, RouteTable
from canaryd.proxies.nginx import NginxProxy
from canaryd.transports.factory import TransportFactory


class ProxyVerificationError(ProxyUnavailableError):
    """The proxy accepted the configuration but does not serve it (yet)."""


def make_proxy(
    app: Application, proxy_server: Server, transports: TransportFactory, http: httpx.AsyncClient
) -> Proxy:
    spec = ProxySpec.model_validate(app.proxy)
    transport = transports.for_server(
        proxy_server.transport, proxy_server.host, proxy_server.ssh_port, proxy_server.ssh_user
    )
    if spec.kind == "nginx":
        return NginxProxy(transport, spec, proxy_server.host, http)
    if spec.kind == "haproxy":
        from canaryd.proxies.haproxy import HaproxyProxy

        return HaproxyProxy(transport, spec, proxy_server.host, http)
    from canaryd.proxies.traefik import TraefikProxy

    return TraefikProxy(transport, spec, proxy_server.host, http)


def backends_json(backends: Sequence[Backend]) -> list[dict[str, object]]:
    """What is stored as 'applied' so the next tick can tell whether anything changed."""
    return [
        {"server_id": b.server_id, "host": b.host, "port": b.port, "weight": b.weight, "cohort": b.cohort}
        for b in backends
    ]


@dataclass(frozen=True, slots=True)
class AppliedRoutes:
    generation: int
    backends: list[dict[str, object]]
    #: Time from the call to the proxy answering with the new generation, in milliseconds.
    live_ms: float


async def push_routes(
    proxy: Proxy, app: Application, backends: Sequence[Backend], generation: int, attempts: int = 3
) -> AppliedRoutes:
    """Applies the route table and waits until the proxy serves it; a split never counts unverified."""
    table = RouteTable(app_id=app.id, app_name=app.name, backends=tuple(backends), generation=generation)
    started = time.perf_counter()
    for _ in range(attempts):
        await proxy.apply(table)
        if await proxy.verify(table):
            live_ms = (time.perf_counter() - started) * 1000
            return AppliedRoutes(generation, backends_json(backends), round(live_ms, 1))
    raise ProxyVerificationError(
        f"the proxy did not serve configuration generation {generation} after {attempts} attempts"
    )
