"""A production-mode worker serves its own /metrics on CANARYD_WORKER_METRICS_PORT (PostgreSQL, Redis, a
real worker), and frees the port when it stops."""

from __future__ import annotations

import asyncio
import socket

import httpx

from canaryd.settings import Settings
from tests.fixtures.nginx import free_port
from tests.fixtures.stack import TOKEN, running_canaryd

from .test_metrics import promtool_check


async def test_worker_metrics_port(pg_url: str, redis_url: str) -> None:
    port = free_port()
    settings = Settings(
        database_url=pg_url, redis_url=redis_url, bootstrap_token=TOKEN, worker_metrics_port=port
    )
    async with running_canaryd(settings, workers=1) as base, httpx.AsyncClient() as http:
        for _ in range(100):
            try:
                r = await http.get(f"http://127.0.0.1:{port}/metrics")
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the worker did not serve /metrics")
        assert r.status_code == 200
        assert "# TYPE canaryd_ticks_total counter" in r.text
        assert "canaryd_tick_lag_seconds_bucket" in r.text
        checked = promtool_check(r.text)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        api = (await http.get(f"{base}/metrics")).text
        assert 'canaryd_deployments{state="pending"} 0.0' in api
    with socket.socket() as s:  # the worker's shutdown closed its metrics server (TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
