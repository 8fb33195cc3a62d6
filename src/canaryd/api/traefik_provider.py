"""Traefik's HTTP provider endpoint: one per proxy server, serving the dynamic configuration of every
application behind that Traefik (as JSON).

Traefik polls it (`providers.http.endpoint`, every `pollInterval`, 5 s by default) and sends the bearer token
of a `read`-scope canaryd token through `providers.http.headers`:

    providers:
      http:
        endpoint: "https://canaryd.example.com/api/v1/traefik/servers/3/config"   # 3: the proxy server's id
        headers:
          Authorization: "Bearer <read token>"

Before the first application is registered the endpoint serves an empty, valid configuration, so Traefik can
be configured (and started) before canaryd knows any application on it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from canaryd.api.deps import ReadAccess, RuntimeDep
from canaryd.db.models import Application
from canaryd.db.repositories import ApplicationRepository, ServerRepository
from canaryd.domain.config import ProxySpec
from canaryd.proxies.base import RouteTable
from canaryd.proxies.traefik import merge_configs, published_config, table_from_applied
from canaryd.runtime import Runtime
from canaryd.services.errors import NotFound

router = APIRouter(prefix="/api/v1/traefik", tags=["traefik"])
PAGE = 500


def _served(app: Application, server_id: int) -> tuple[ProxySpec, RouteTable] | None:
    """The application's proxy settings and applied table, when it sits behind this server's HTTP provider."""
    spec = ProxySpec.model_validate(app.proxy)
    if spec.kind != "traefik" or spec.provider != "http" or spec.server_id != server_id:
        return None
    return spec, table_from_applied(app.id, app.name, list(app.proxy_applied), app.proxy_generation)


async def traefik_server_config(rt: Runtime, server_id: int) -> dict[str, Any]:
    """Every HTTP-provider application on the proxy server `server_id`, as one configuration: what canaryd
    last published for each (see proxies/traefik.py)."""
    served: list[tuple[ProxySpec, RouteTable]] = []
    async with rt.sessions() as session:  # read what is needed, then release the connection before any I/O
        proxy_server = await ServerRepository(session).get(server_id)
        if proxy_server is None:
            raise NotFound(f"server {server_id} not found")
        apps, offset = ApplicationRepository(session), 0
        while page := await apps.list(PAGE, offset):
            served += [s for app in page if (s := _served(app, server_id)) is not None]
            offset += PAGE
    transport = rt.transports.for_server(
        proxy_server.transport, proxy_server.host, proxy_server.ssh_port, proxy_server.ssh_user
    )
    configs = [config for spec, table in served if (config := await published_config(transport, spec, table))]
    return merge_configs(configs)


@router.get("/servers/{server_id}/config")
async def get_traefik_server_config(server_id: int, rt: RuntimeDep, _: ReadAccess) -> dict[str, Any]:
    """Dynamic configuration for Traefik's HTTP provider on proxy server `server_id` (read scope)."""
    return await traefik_server_config(rt, server_id)
