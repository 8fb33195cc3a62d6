"""Builds the proxy adapter for an application and keeps the proxy in line with the database."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from canaryd.db.models import Application, Server
from canaryd.domain.config import ProxySpec
from canaryd.domain.types import Backend
from canaryd.proxies.base import Proxy
from canaryd.proxies.nginx import NginxProxy
from canaryd.proxies.nginx_workers import KnownMasters
from canaryd.transports.factory import TransportFactory


def make_proxy(
    app: Application,
    proxy_server: Server,
    transports: TransportFactory,
    http: httpx.AsyncClient,
    nginx_masters: KnownMasters,
) -> Proxy:
    spec = ProxySpec.model_validate(app.proxy)
    transport = transports.for_server(
        proxy_server.transport, proxy_server.host, proxy_server.ssh_port, proxy_server.ssh_user
    )
    if spec.kind == "nginx":
        return NginxProxy(transport, spec, proxy_server.host, http, masters=nginx_masters)
    if spec.kind == "haproxy":
        from canaryd.proxies.haproxy import HaproxyProxy

        return HaproxyProxy(transport, spec, proxy_server.host, http)
    from canaryd.proxies.traefik import TraefikProxy

    return TraefikProxy(transport, spec, proxy_server.host, http)


def backends_json(backends: Sequence[Backend]) -> list[dict[str, object]]:
    """What is stored as 'applied' so the next tick can tell whether anything changed."""
    return [b.to_json() for b in backends]
