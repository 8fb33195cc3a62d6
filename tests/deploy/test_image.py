"""The container image, built with podman from a locally made Debian 12 base, run for real: its contents, then
`canaryd migrate` and `canaryd serve` in it, and a canary driven by the containerised canaryd (host network)
against a loopback nginx and sample apps reached over SSH, as a production canaryd reaches its servers.

Slow the first time on a machine (the base is made with debootstrap); seconds of building after that."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.deploy.podman import build_image, podman, run_limits
from tests.fixtures.nginx import free_port, start_nginx
from tests.fixtures.sshd import running_sshd
from tests.fixtures.stack import APPCTL, TOKEN, LoadGenerator, Stack, loopback_hosts

from canaryd.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The threshold judge decides on 10 requests a side; the sequential one (the default) needs hundreds.
FAST = {
    "stages": [50, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "min_requests": 10,
    "judge": "threshold",
    "latency_min_difference_ms": 5000,  # latency is noise on a machine the suite loads; not tested here
}


@pytest.fixture(scope="module")
def image() -> str:
    return build_image()


def in_image(image: str, script: str) -> str:
    proc = podman("run", "--rm", *run_limits(), "--entrypoint", "sh", image, "-c", script)
    return proc.stdout


def test_image_has_no_build_tools_and_runs_as_non_root(image: str) -> None:
    out = in_image(
        image,
        "id -u; id -g; pwd; for c in uv pip gcc cc make; do command -v $c || echo no-$c; done; "
        "test -e /src && echo has-src || echo no-src; "
        "test -e /run/secrets/ca-bundle -o -e /run/secrets/index-env && echo has-secrets || echo no-secrets; python3 -c 'import canaryd.db.migrate as m; print(m.ROOT)'; "
        "ls /opt/canaryd/lib/python3.11/site-packages/canaryd/migrations/versions | grep -c '[.]py$'",
    ).split()
    uid, gid, workdir, *rest = out
    assert (uid, gid, workdir) == ("10001", "10001", "/var/lib/canaryd")
    assert rest[:7] == ["no-uv", "no-pip", "no-gcc", "no-cc", "no-make", "no-src", "no-secrets"], rest
    assert "/opt/canaryd/lib/python3.11/site-packages/canaryd" in out
    assert int(out[-1]) >= 1
    [meta] = json.loads(podman("image", "inspect", image).stdout)
    assert meta["Config"]["User"] == "10001:10001"
    lent = ("PIP_", "UV_", "SSL_CERT", "REQUESTS_CA", "HTTP_PROXY", "HTTPS_PROXY")
    assert not [e for e in meta["Config"]["Env"] if e.startswith(lent)], (
        "build settings leaked into the image"
    )
    assert "/var/lib/canaryd" in meta["Config"]["Volumes"]
    assert meta["Config"]["Entrypoint"] == ["canaryd"] and meta["Config"]["Cmd"] == ["serve"]
    assert "CANARYD_PORT" in " ".join(meta["Healthcheck"]["Test"])
    print(f"image size: {meta['Size'] / 1e6:.0f} MB")  # shown with -s; the figure is in deploy/README.md


def test_build_context_leaves_secrets_out(image: str, tmp_path: Path) -> None:
    """.dockerignore sends only what the Dockerfile copies: no deploy/ssh keys, .env, .venv or .git."""
    context_probe = tmp_path / "Containerfile"
    context_probe.write_text(f"FROM {image}\nCOPY . /tmp/context/\n")
    repo = Path(__file__).resolve().parents[2]
    ssh_dir = repo / "deploy" / "ssh"
    made_ssh_dir = not ssh_dir.exists()
    planted = ssh_dir / f"id_probe_{uuid.uuid4().hex[:8]}"
    ssh_dir.mkdir(exist_ok=True)
    planted.write_text("not a real key\n")
    tag = f"localhost/canaryd-context-probe:{uuid.uuid4().hex[:8]}"
    try:
        podman("build", "--quiet", "--pull=never", "-f", str(context_probe), "-t", tag, str(repo))
        listing = podman(
            "run",
            "--rm",
            *run_limits(),
            "--entrypoint",
            "sh",
            tag,
            "-c",
            "cd /tmp/context && find . -maxdepth 3 | sort",
        ).stdout.split()
    finally:
        planted.unlink()
        if made_ssh_dir:
            shutil.rmtree(ssh_dir, ignore_errors=True)
        podman("rmi", "-f", tag, check=False)
    assert "./src/canaryd/migrations" in listing and "./uv.lock" in listing
    for leaked in ("./deploy/ssh", "./.venv", "./.git", "./deploy/.env", "./tests"):
        assert leaked not in listing, f"{leaked} is in the build context"


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"canaryd-test-{uuid.uuid4().hex[:10]}"
    podman("volume", "create", name)
    try:
        yield name
    finally:
        podman("volume", "rm", "-f", name, check=False)


async def test_migrate_serve_and_a_canary_in_the_container(image: str, volume: str, tmp_path: Path) -> None:
    """migrate, then serve (default command) with the data volume, on a port that is not the default 8080; the
    health check follows it; /docs answers; a healthy canary completes through the containerised canaryd."""
    migrated = podman("run", "--rm", *run_limits(), "-v", f"{volume}:/var/lib/canaryd", image, "migrate")
    assert "created the schema" in migrated.stdout, migrated.stdout
    mountpoint = Path(podman("volume", "inspect", volume, "--format", "{{.Mountpoint}}").stdout.strip())
    database = mountpoint / "canaryd.db"
    assert database.is_file() and database.stat().st_uid == 10001, "the default SQLite file is in the volume"

    hosts = loopback_hosts(4)
    proxy_host = hosts[0].rsplit(".", 1)[0] + ".10"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "bootstrap_token").write_text(TOKEN + "\n")
    nginx = start_nginx()
    container = f"canaryd-test-{uuid.uuid4().hex[:10]}"
    with running_sshd(proxy_host, extra_hosts=hosts) as sshd:
        ssh_dir = tmp_path / "ssh"
        ssh_dir.mkdir()
        shutil.copy(sshd.known_hosts, ssh_dir / "known_hosts")
        shutil.copy(sshd.client_key, ssh_dir / "id_ed25519")
        for path in (ssh_dir, secrets, *ssh_dir.iterdir(), *secrets.iterdir()):
            os.chown(path, 10001, 10001)
        port = free_port()
        stack: Stack | None = None
        try:
            podman(
                "run", "--detach", "--name", container, "--network", "host", *run_limits(),
                "--health-interval", "disable",  # no systemd timers here; `podman healthcheck run` below
                "-v", f"{volume}:/var/lib/canaryd",
                "-v", f"{ssh_dir}:/etc/canaryd/ssh:ro",
                "-v", f"{secrets}:/run/secrets:ro",
                "-e", f"CANARYD_PORT={port}",
                "-e", "CANARYD_HOST=127.0.0.1",
                "-e", "CANARYD_BOOTSTRAP_TOKEN_FILE=/run/secrets/bootstrap_token",
                "-e", "CANARYD_MIN_STAGE_DURATION=1",
                "-e", "CANARYD_SSH_KNOWN_HOSTS=/etc/canaryd/ssh/known_hosts",
                "-e", 'CANARYD_SSH_CLIENT_KEYS=["/etc/canaryd/ssh/id_ed25519"]',
                image,
            )  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            await wait_healthy(base, container)
            assert podman("healthcheck", "run", container, check=False).returncode == 0, "health check failed"
            async with httpx.AsyncClient(
                base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            ) as api:
                docs = await api.get(f"{base}/docs")
                assert docs.status_code == 200 and "swagger" in docs.text.lower()
                stack = Stack(base, api, nginx, hosts, free_port(), tmp_path, Settings(bootstrap_token=TOKEN))
                await register_over_ssh(stack, sshd.port, proxy_host)
                load = LoadGenerator(stack.proxy_url, rate=40).start()
                created = await stack.deploy("v2", FAST)
                assert created.status_code == 201, created.text
                dep_id = created.json()["id"]
                await stack.wait(dep_id, timeout=120)
                await load.stop()
                status = await stack.status(dep_id)
                assert status["canary_status"] == "completed", (status["reasons"], logs(container))
                assert await stack.fleet_versions() == ["v2"] * len(hosts)
                served = {h.version for h in load.hits if h.status == 200}
                assert served == {"v1", "v2"}, served
                assert not [h for h in load.hits if h.status == 0 or h.status >= 500], load.errors[:3]
        finally:
            podman("rm", "--force", "--time", "5", container, check=False)
            if stack is not None:
                await stack.stop_fleet()
            nginx.cleanup()


async def wait_healthy(base: str, container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{base}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail(f"canaryd in the container did not answer {base}/healthz:\n{logs(container)}", pytrace=False)


def logs(container: str) -> str:
    proc = podman("logs", container, check=False)
    return (proc.stdout + proc.stderr)[-4000:]


async def register_over_ssh(stack: Stack, ssh_port: int, proxy_host: str) -> dict[str, Any]:
    """Starts v1 on every host and registers servers, the proxy's host and the application, all reached over
    SSH (the container has neither the apps nor nginx: commands run on the host, through sshd)."""
    await stack.start_fleet("v1")
    ssh = {"transport": "ssh", "ssh_port": ssh_port, "ssh_user": "root"}
    for i, host in enumerate(stack.hosts):
        r = await stack.api.post("/servers", json={"name": f"s{i}", "host": host, **ssh})
        assert r.status_code == 201, r.text
        stack.server_ids.append(r.json()["id"])
    r = await stack.api.post("/servers", json={"name": "proxy", "host": proxy_host, **ssh})
    assert r.status_code == 201, r.text
    proxy_id = r.json()["id"]
    deploy = (
        f"CONTRACT_STATE={stack.state_dir} {sys.executable} {APPCTL} "
        "start --host {host} --port {port} --version {version}"
    )
    body = {
        "name": "shop",
        "port": stack.app_port,
        "health_path": "/health",
        "server_ids": stack.server_ids,
        "current_version": "v1",
        "deploy_command": deploy,
        "stop_command": None,
        "proxy": {**stack.nginx.spec(server_id=proxy_id).model_dump(), "server_id": proxy_id},
    }
    r = await stack.api.post("/applications", json=body)
    assert r.status_code == 201, r.text
    stack.app = r.json()
    return stack.app
