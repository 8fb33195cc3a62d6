"""Traefik's HTTP provider endpoint: one application's dynamic configuration, as JSON.

Traefik polls it (`providers.http.endpoint`, every `pollInterval`, 5 s by default) and sends the bearer token
of a `read`-scope canaryd token through `providers.http.headers`:

    providers:
      http:
        endpoint: "https://canaryd.example.com/api/v1/traefik/7/config"
        headers:
          Authorization: "Bearer <read token>"
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from canaryd.api.deps import ReadAccess, RuntimeDep
from canaryd.db.repositories import ApplicationRepository, ServerRepository
from canaryd.domain.config import ProxySpec
from canaryd.proxies.traefik import published_config, table_from_applied
from canaryd.runtime import Runtime
from canaryd.services.errors import NotFound

router = APIRouter(prefix="/api/v1/traefik", tags=["traefik"])


async def traefik_config(rt: Runtime, application_id: int) -> dict[str, Any]:
    """The configuration canaryd last published for the application (see proxies/traefik.py)."""
    async with rt.sessions() as session:  # read what is needed, then release the connection before any I/O
        app = await ApplicationRepository(session).get(application_id)
        if app is None:
            raise NotFound(f"application {application_id} not found")
        spec = ProxySpec.model_validate(app.proxy)
        if spec.kind != "traefik":
            raise NotFound(f"application {application_id} is not behind Traefik")
        proxy_server = await ServerRepository(session).get(spec.server_id)
        fallback = table_from_applied(app.id, app.name, list(app.proxy_applied), app.proxy_generation)
    if proxy_server is None:
        raise NotFound(f"the proxy server {spec.server_id} of application {application_id} does not exist")
    transport = rt.transports.for_server(
        proxy_server.transport, proxy_server.host, proxy_server.ssh_port, proxy_server.ssh_user
    )
    config = await published_config(transport, spec, fallback)
    if config is None:
        raise NotFound(f"no configuration has been published for application {application_id} yet")
    return config


@router.get("/{application_id}/config")
async def get_traefik_config(application_id: int, rt: RuntimeDep, _: ReadAccess) -> dict[str, Any]:
    """Dynamic configuration for Traefik's HTTP provider (read scope)."""
    return await traefik_config(rt, application_id)
