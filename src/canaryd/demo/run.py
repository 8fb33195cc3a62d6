"""`canaryd demo`: the whole job on this machine, printed live.

Embedded mode (SQLite, in-process scheduler), a real nginx, five instances of the sample app on loopback
addresses and a load generator. A healthy canary (v2) goes to completion; a canary answering 30 % errors
(v3-bad) is rolled back automatically. Everything it starts is stopped again, and its files removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import connect

from canaryd.api.app import SERVER_OPTIONS, create_app
from canaryd.db.migrate import upgrade
from canaryd.settings import Settings

HERE = Path(__file__).resolve().parent
APPCTL = HERE / "appctl.py"
STAGES = [10, 25, 50, 75, 100]
SERVERS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass
class Traffic:
    """Requests through nginx on fresh connections; remembers which version answered and how."""

    url: str
    rate: float = 50.0
    hits: list[tuple[float, int, str]] = field(default_factory=list)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while True:
                asyncio.get_running_loop().create_task(self._one(client))
                await asyncio.sleep(1 / self.rate)

    async def _one(self, client: httpx.AsyncClient) -> None:
        at = time.time()
        try:
            r = await client.get(self.url)
            self.hits.append((at, r.status_code, r.headers.get("x-version", "")))
        except httpx.HTTPError:
            self.hits.append((at, 0, ""))

    def share(self, version: str, since: float) -> tuple[float, int, int]:
        """Canary share in percent, requests and 5xx/failed answers since `since`."""
        window = [h for h in self.hits if h[0] >= since]
        if not window:
            return 0.0, 0, 0
        canary = sum(1 for h in window if h[2] == version)
        bad = sum(1 for h in window if h[1] == 0 or h[1] >= 500)
        return 100.0 * canary / len(window), len(window), bad


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        net = random.randint(10, 250)
        self.hosts = [f"127.0.{net}.{11 + i}" for i in range(SERVERS)]
        self.app_port, self.proxy_port, self.api_port = _free_port(), _free_port(), _free_port()
        self.token = secrets.token_urlsafe(24)
        self.env = {**os.environ, "CONTRACT_STATE": str(workdir)}
        self.nginx_main = workdir / "nginx.conf"

    # --- parts --------------------------------------------------------------------------------------
    def start_nginx(self) -> dict[str, Any]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(nginx, os.X_OK):
            raise SystemExit(
                "nginx is not installed: run `make setup` as root (or apt-get install -y nginx-light)"
            )
        confd = self.dir / "conf.d"
        confd.mkdir()
        self.nginx_main.write_text(
            f"worker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/nginx-error.log;\n"
            "events { worker_connections 1024; }\n"
            f"http {{ access_log off; client_body_temp_path {self.dir}/client-body; proxy_temp_path {self.dir}/proxy-buffers;\n"
            f"  include {confd}/*.conf; }}\n"
        )
        subprocess.run([nginx, "-c", str(self.nginx_main)], check=True)
        return {
            "kind": "nginx",
            "config_path": str(confd / "demo.conf"),
            "reload_command": f"{nginx} -c {self.nginx_main} -s reload",
            "test_command": f"{nginx} -c {self.nginx_main} -t -q",
            "listen": f"127.0.0.1:{self.proxy_port}",
            "access_log": str(self.dir / "access.log"),
        }

    def stop_nginx(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((self.dir / "nginx.pid").read_text().split()[0]), signal.SIGQUIT)

    def appctl(self, *args: str) -> None:
        subprocess.run([sys.executable, str(APPCTL), *args], check=True, env=self.env)

    @contextlib.asynccontextmanager
    async def canaryd(self) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{self.dir}/canaryd.db",
            redis_url=None,
            bootstrap_token=self.token,
            min_stage_duration=1,
            log_level="WARNING",
        )
        await asyncio.to_thread(upgrade, settings.database_url)
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.api_port, log_level="warning", **SERVER_OPTIONS
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        base = f"http://127.0.0.1:{self.api_port}"
        async with httpx.AsyncClient(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        ) as api:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await api.get(f"{base}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            try:
                yield api
            finally:
                server.should_exit = True
                await task

    # --- the story ----------------------------------------------------------------------------------
    async def register(self, api: httpx.AsyncClient, proxy: dict[str, Any]) -> int:
        ids = []
        for i, host in enumerate(self.hosts):
            r = await api.post("/servers", json={"name": f"web-{i + 1}", "host": host, "transport": "local"})
            r.raise_for_status()
            ids.append(r.json()["id"])
        r = await api.post("/servers", json={"name": "proxy", "host": "127.0.0.1", "transport": "local"})
        r.raise_for_status()
        proxy["server_id"] = r.json()["id"]
        py = sys.executable
        r = await api.post(
            "/applications",
            json={
                "name": "shop",
                "port": self.app_port,
                "health_path": "/health",
                "server_ids": ids,
                "current_version": "v1",
                "deploy_command": f"CONTRACT_STATE={self.dir} {py} {APPCTL} start --host {{host}} --port {{port}} --version {{version}}",
                "proxy": proxy,
            },
        )
        if r.status_code != 201:
            raise SystemExit(f"registering the application failed: {r.status_code} {r.text}")
        return int(r.json()["id"])

    async def canary(
        self, api: httpx.AsyncClient, app_id: int, version: str, traffic: Traffic
    ) -> dict[str, Any]:
        config = {"stages": STAGES, "stage_duration": 4, "health_check_interval": 1, "min_requests": 20}
        r = await api.post(f"/applications/{app_id}/deployments", json={"version": version, "config": config})
        if r.status_code != 201:
            raise SystemExit(f"creating the deployment failed: {r.status_code} {r.text}")
        dep = r.json()
        # previous_version is what the servers run now (v2 after the first canary completed), not v1.
        _say(f"\n=== deployment {dep['id']}: {dep['previous_version']} → {version}, stages {STAGES} % ===")
        ws_url = f"ws://127.0.0.1:{self.api_port}/api/v1/deployments/{dep['id']}/ws"
        stage_since = time.time()
        async with connect(ws_url, additional_headers={"Authorization": f"Bearer {self.token}"}) as ws:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") == "status":
                    if msg["canary_status"] in ("completed", "rolled_back", "failed"):
                        return dict(msg)
                    continue
                stage_since = self.print_event(msg, version, traffic, stage_since)
        return dict((await api.get(f"/deployments/{dep['id']}")).json())

    def print_event(self, event: dict[str, Any], version: str, traffic: Traffic, since: float) -> float:
        kind = event["kind"]
        clock = time.strftime("%H:%M:%S")
        reasons = "; ".join(event.get("reasons") or [])
        if kind == "health_check":
            canary = event["metrics"].get("canary", {})
            share, n, bad = traffic.share(version, since)
            _say(
                f"{clock}   check  stage {event['stage']}: canary {canary.get('requests', 0)} req, "
                f"errors {canary.get('errors', 0)}, p95 {canary.get('p95_ms')} ms | client saw {share:4.1f} % {version} "
                f"of {n}, {bad} failed"
            )
            return since
        if kind == "stage_advanced":
            live = event["metrics"].get("proxy", {}).get("live_ms")
            _say(
                f"{clock} ▶ stage {event['stage']}: {event['traffic_percentage']:g} % to canary (nginx live in {live} ms)"
            )
            return time.time()
        transition = f" {event['from_state']} → {event['to_state']}" if event.get("to_state") else ""
        _say(f"{clock} • {kind}{transition}{': ' + reasons if reasons else ''}")
        return since

    async def run(self) -> int:
        _say(f"canaryd demo in {self.dir}")
        for host in self.hosts:
            self.appctl("start", "--host", host, "--port", str(self.app_port), "--version", "v1")
        _say(f"started 5 sample app instances (v1) on {', '.join(self.hosts)} port {self.app_port}")
        proxy = self.start_nginx()
        _say(f"started nginx; the app will be served on http://127.0.0.1:{self.proxy_port}/")
        ok = True
        async with self.canaryd() as api:
            app_id = await self.register(api, proxy)
            _say("registered 5 servers and the application: nginx now serves v1 from all five")
            traffic = Traffic(f"http://127.0.0.1:{self.proxy_port}/")
            load = asyncio.create_task(traffic.run())
            try:
                good = await self.canary(api, app_id, "v2", traffic)
                _say(f"result: {good['canary_status']} — servers run {self.versions()}")
                ok &= good["canary_status"] == "completed"
                bad = await self.canary(api, app_id, "v3-bad", traffic)
                _say(
                    f"result: {bad['canary_status']} ({'; '.join(bad['reasons'])}) — servers run {self.versions()}"
                )
                ok &= bad["canary_status"] == "rolled_back"
            finally:
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
        failed = sum(1 for h in traffic.hits if h[1] == 0)
        _say(f"\nclient requests: {len(traffic.hits)}, connection failures: {failed}")
        _say("demo passed" if ok else "demo FAILED")
        return 0 if ok else 1

    def versions(self) -> list[str]:
        out = []
        for host in self.hosts:
            try:
                r = httpx.get(f"http://{host}:{self.app_port}/health", timeout=2)
                out.append(r.headers.get("x-version", "?"))
            except httpx.HTTPError:
                out.append("down")
        return out

    def cleanup(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(subprocess.CalledProcessError):
                self.appctl("stop", "--host", host, "--port", str(self.app_port))
        self.stop_nginx()


def run_demo(keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="canaryd-demo-"))
    workdir.chmod(0o755)  # nginx workers (user nobody) write the access log here
    demo = Demo(workdir)
    try:
        return asyncio.run(demo.run())
    finally:
        demo.cleanup()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
