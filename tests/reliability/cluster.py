"""A production-mode canaryd made of REAL processes (`canaryd serve`, `canaryd worker`), so that faults can
be provoked for real: SIGKILL a worker, flush or restart Redis, restart PostgreSQL. Plus what it manages: one
real nginx master with one include file per application, and sample-app fleets on 127.0.x.y.

Also the checks every fault test ends with: each deployment finished, and what canaryd says matches what
the servers run and what nginx serves; its history is gap-free and applies nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fixtures.nginx import NginxInstance, free_port, start_nginx
from tests.fixtures.stack import LoadGenerator

import canaryd.demo

APPCTL = Path(canaryd.demo.__file__).with_name("appctl.py")
VENV_BIN = Path(sys.executable).parent
TOKEN = "reliability-bootstrap-token-0123456789"
TERMINAL = {"completed", "rolled_back", "failed"}
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)

#: Short stages and fast fault detection, so a test runs many rollouts in seconds.
FAST = {
    "stages": [20, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "min_requests": 3,
    "deploy_timeout": 3,
    "judge": "threshold",  # the spec's rule: decides on few requests, so short stages finish
    # Faults are tested here, not verdicts: latency differences under 5 s never fail these canaries on a
    # machine the rest of the suite loads (the p95 rule once rolled a healthy one back in a Redis-loss run).
    "latency_min_difference_ms": 5000,
}


@dataclass
class App:
    """One registered application: its fleet, its nginx include file and a load generator through it."""

    id: int
    name: str
    hosts: list[str]
    port: int
    listen: str
    config_path: str
    server_ids: list[int]
    load: LoadGenerator | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://{self.listen}/"


@dataclass
class Cluster:
    """Processes of one production-mode canaryd and the fleet it manages, all stopped on exit."""

    dir: Path
    env: dict[str, str]
    nginx: NginxInstance
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    apis: list[str] = field(default_factory=list)
    apps: list[App] = field(default_factory=list)
    kills: int = 0
    _proxy_server_id: int | None = None

    # --- processes ------------------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    async def start_api(self) -> str:
        """Starts one more `canaryd serve` replica; returns its base URL once /healthz answers."""
        port = free_port()
        name = f"api{len(self.apis)}"
        proc = self.spawn(
            name, [str(VENV_BIN / "canaryd"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        )
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=1) as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        self.apis.append(base)
                        return base
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
        pytest.fail(f"canaryd serve did not become healthy: {self.log(name)}")

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        return self.spawn(name, [str(VENV_BIN / "canaryd"), "worker"])

    def kill(self, name: str) -> int:
        """SIGKILL, no goodbye: the process cannot release a lease or finish a transaction."""
        proc = self.procs[name]
        proc.kill()
        proc.wait()
        self.kills += 1
        return proc.pid

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*.log")))

    def client(self, base: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{base or self.apis[0]}/api/v1",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )

    # --- fleet ----------------------------------------------------------------------------------------
    async def appctl(self, action: str, host: str, port: int, version: str | None = None) -> None:
        args = [sys.executable, str(APPCTL), action, "--host", host, "--port", str(port)]
        if version:
            args += ["--version", version]
        proc = await asyncio.create_subprocess_exec(
            *args, env={"CONTRACT_STATE": str(self.dir), "PATH": "/usr/bin:/bin"}
        )
        assert await proc.wait() == 0

    async def add_app(self, api: httpx.AsyncClient, name: str, servers: int = 2, version: str = "v1") -> App:
        """Starts a fleet at `version` and registers its servers and the application (own nginx file)."""
        net = random.randint(10, 250)
        hosts = [f"127.{net}.{len(self.apps) + 1}.{11 + i}" for i in range(servers)]
        port = free_port()
        await asyncio.gather(*(self.appctl("start", host, port, version) for host in hosts))
        if self._proxy_server_id is None:
            r = await api.post("/servers", json={"name": "proxy", "host": "127.0.0.1", "transport": "local"})
            assert r.status_code == 201, r.text
            self._proxy_server_id = r.json()["id"]
        ids = []
        for i, host in enumerate(hosts):
            r = await api.post("/servers", json={"name": f"{name}-s{i}", "host": host, "transport": "local"})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        listen = f"127.0.0.1:{free_port()}"
        config_path = f"{self.nginx.dir}/conf.d/{name}.conf"
        body = {
            "name": name,
            "port": port,
            "health_path": "/health",
            "server_ids": ids,
            "current_version": version,
            "deploy_command": (
                f"CONTRACT_STATE={self.dir} {sys.executable} {APPCTL} start --host {{host}} --port {{port}} "
                "--version {version}"
            ),
            "proxy": {
                "kind": "nginx",
                "server_id": self._proxy_server_id,
                "config_path": config_path,
                "reload_command": self.nginx.reload_command,
                "test_command": self.nginx.test_command,
                "listen": listen,
                "access_log": f"{self.nginx.dir}/{name}.access.log",
            },
        }
        r = await api.post("/applications", json=body)
        assert r.status_code == 201, r.text
        app = App(r.json()["id"], name, hosts, port, listen, config_path, ids)
        self.apps.append(app)
        return app


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, database_url: str, redis_url: str, **env: str) -> AsyncIterator[Cluster]:
    """A migrated database, nginx, and no canaryd process yet (start them with start_api/start_worker).
    The lease and the reconcile interval are the shipped defaults (15 s, 10 s) unless a test passes others
    in `env` (and its docstring says which and why)."""
    environ = {
        **os.environ,
        "CANARYD_DATABASE_URL": database_url,
        "CANARYD_REDIS_URL": redis_url,
        "CANARYD_BOOTSTRAP_TOKEN": TOKEN,
        "CANARYD_MIN_STAGE_DURATION": "1",
        "CANARYD_HEALTH_CHECK_TIMEOUT": "2",
        "CANARYD_LOG_LEVEL": "WARNING",
        **env,
    }
    r = subprocess.run([str(VENV_BIN / "canaryd"), "migrate"], env=environ, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    nginx = start_nginx()
    c = Cluster(tmp_path, environ, nginx)
    try:
        yield c
    except BaseException:
        kept = tempfile.mkdtemp(prefix="canaryd-reliability-logs-")
        for log in tmp_path.glob("*.log"):
            shutil.copy(log, kept)
        print(f"\nlogs of the failed run kept in {kept}")
        raise
    finally:
        for app in c.apps:
            if app.load is not None:
                await app.load.stop()
        for proc in c.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in c.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await asyncio.gather(*(c.appctl("stop", host, app.port) for app in c.apps for host in app.hosts))
        nginx.cleanup()


# --- separate Redis and PostgreSQL servers, so restarting them disturbs nobody else ---------------------------


@dataclass
class RedisServer:
    port: int
    dir: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server", pytrace=False)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            if time.monotonic() > deadline:
                pytest.fail("the test's redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: everything in it (queued and deferred jobs) is gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args: str) -> str:
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return r.stdout.strip()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port (not the shared one on 6379)."""
    server = RedisServer(free_port(), tempfile.mkdtemp(prefix="canaryd-redis-"))
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        shutil.rmtree(server.dir, ignore_errors=True)


@dataclass
class PostgresCluster:
    port: int
    dir: str

    @property
    def options(self) -> str:
        return f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"

    def start(self) -> None:
        self.ctl("-o", self.options, "start")

    def stop(self) -> None:
        """A fast shutdown: PostgreSQL ends every session (what a restart or failover does)."""
        self.ctl("-m", "fast", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        assert PG_BIN is not None
        r = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                f"{self.dir}/data",
                "-l",
                f"{self.dir}/pg.log",
                "-w",
                "-t",
                "30",
                *args,
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster (initdb in a temp dir, own port), so restarting it disturbs nobody."""
    if PG_BIN is None:
        pytest.fail("PostgreSQL server binaries are missing: apt-get install -y postgresql", pytrace=False)
    d = tempfile.mkdtemp(prefix="canaryd-pg-")
    shutil.chown(d, "postgres", "postgres")
    r = subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "initdb"),
            "-D",
            f"{d}/data",
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    port = free_port()
    pg = PostgresCluster(port, d)
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(AssertionError):
            pg.ctl("-m", "immediate", "stop")
        shutil.rmtree(d, ignore_errors=True)


# --- the checks ---------------------------------------------------------------------------------------------


async def wait_terminal(
    api: httpx.AsyncClient, dep_ids: list[int], timeout: float
) -> dict[int, dict[str, Any]]:
    """Polls until every deployment is terminal; fails naming the stuck ones."""
    deadline = time.monotonic() + timeout
    done: dict[int, dict[str, Any]] = {}
    while True:
        for dep_id in dep_ids:
            if dep_id in done:
                continue
            with contextlib.suppress(httpx.HTTPError):
                r = await api.get(f"/deployments/{dep_id}")
                if r.status_code == 200 and r.json()["canary_status"] in TERMINAL:
                    done[dep_id] = r.json()
        if len(done) == len(dep_ids):
            return done
        if time.monotonic() > deadline:
            stuck = {}
            for d in dep_ids:
                if d not in done:
                    st = (await api.get(f"/deployments/{d}")).json()
                    stuck[d] = (st["canary_status"], st["reasons"])
            pytest.fail(f"deployments stuck after {timeout} s: {stuck}")
        await asyncio.sleep(0.2)


def check_history(events: list[dict[str, Any]]) -> None:
    """seq 1..n without gaps; states chain; each stage applied once; each server changed at most once per
    kind; one creation, one terminal event, last."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"seq has gaps or duplicates: {seqs}"
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "deployment_created" and kinds.count("deployment_created") == 1, kinds
    terminal = [k for k in kinds if k in ("completed", "rolled_back")]
    assert len(terminal) == 1 and kinds[-1] == terminal[0], kinds
    state = None
    for e in events:
        if e["to_state"] is not None and e["kind"] != "stage_advanced":
            if state is not None:
                assert e["from_state"] == state, (
                    f"event {e['seq']} {e['kind']} from {e['from_state']}, was {state}"
                )
            state = e["to_state"]
    stages = [e["stage"] for e in events if e["kind"] == "stage_advanced"]
    assert len(stages) == len(set(stages)) and stages == sorted(stages), f"a stage applied twice: {stages}"
    per_server = Counter(
        (e["kind"], e["metrics"].get("server"))
        for e in events
        if e["kind"] in ("server_deployed", "server_promoted", "server_restored")
    )
    assert all(n == 1 for n in per_server.values()), f"a server changed twice: {per_server}"


async def check_reality(
    api: httpx.AsyncClient, app: App, status: dict[str, Any], nginx: NginxInstance
) -> str:
    """What canaryd reports is what runs and what nginx serves. Returns the version everything runs."""
    assert status["canary_status"] in ("completed", "rolled_back"), (
        status["canary_status"],
        status["reasons"],
    )
    events = (await api.get(f"/deployments/{status['id']}/events")).json()
    expected = status["version"] if status["canary_status"] == "completed" else status["previous_version"]
    async with httpx.AsyncClient(timeout=3, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for host in app.hosts:
            got = (await client.get(f"http://{host}:{app.port}/health")).headers.get("x-version")
            assert got == expected, (
                f"{app.name} {host} runs {got}, canaryd says {status['canary_status']} ({expected})"
            )
        seen = {(await client.get(app.proxy_url)).headers.get("x-version") for _ in range(10)}
        assert seen == {expected}, f"{app.name}: nginx serves {seen}, expected {expected}"
        application = (await api.get(f"/applications/{app.id}")).json()
        probe = await client.get(f"http://{app.listen}/.canaryd/generation")
        assert probe.text.strip() == str(application["proxy_generation"]), "nginx serves another generation"
    text = Path(app.config_path).read_text()
    upstream = sorted(re.findall(r"^\s+server (\S+) weight=", text, re.M))
    assert upstream == sorted(f"{h}:{app.port}" for h in app.hosts), upstream
    if status["canary_status"] == "completed":
        assert application["current_version"] == expected
    check_history(events)
    return expected
