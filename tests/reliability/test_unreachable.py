"""Parts that fail or cannot be reached, for real: a deploy command that exits 1, a health endpoint that
accepts connections and never answers, nginx refusing its config test, and the servers' and the proxy's
sshd stopped. Each is retried where that makes sense, then handled safely: rolled back with the reason, or
`failed` with the reason while canaryd keeps retrying, recovering to rolled_back when the part comes back.

The retry backoff is capped at 2 s here (the setting CANARYD_MAX_RETRY_BACKOFF, default 60 s) so the
tests take seconds; the logic under test is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.fixtures.sshd import running_sshd
from tests.fixtures.stack import APPCTL, LoadGenerator, Stack, loopback_hosts, make_stack

FAST = {
    "stages": [20, 50, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "min_requests": 3,
    "deploy_timeout": 3,
    "judge": "threshold",
    "latency_min_difference_ms": 5000,  # latency is noise on a machine the suite loads; not tested here
}

HANG = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
held = []
while True:  # accept, never read, never answer
    held.append(s.accept())
"""

DEPLOY = """#!/bin/sh
# deploy.sh HOST PORT VERSION: "*fail*" exits 1, "*hang*" runs a server that never answers.
host=$1; port=$2; version=$3
pidf="$CONTRACT_STATE/hang-$host-$port.pid"
if [ -f "$pidf" ]; then kill -9 "$(cat "$pidf")" 2>/dev/null; rm -f "$pidf"; fi
case "$version" in
  *fail*) echo "cannot install $version: disk full" >&2; exit 1 ;;
  *hang*)
    {py} {appctl} stop --host "$host" --port "$port"
    {py} "$CONTRACT_STATE/hang.py" "$host" "$port" >/dev/null 2>&1 </dev/null &
    echo $! > "$pidf"; exit 0 ;;
esac
exec {py} {appctl} start --host "$host" --port "$port" --version "$version"
"""

PROXY_TEST = """#!/bin/sh
if [ -f "$CONTRACT_STATE/refuse" ]; then echo "nginx: [emerg] refused by the test" >&2; exit 1; fi
exec {test}
"""


async def register(
    s: Stack,
    transport: dict[str, Any] | None = None,
    proxy_host: str = "127.0.0.1",
    slow_shell_tries: int = 1,
) -> None:
    """Like Stack.register, with deploy.sh as the deploy command and proxytest.sh as nginx's test command.
    `slow_shell_tries`: how often the application's registration is sent while it is refused because a login
    shell did not start within a short `ssh_connect_timeout` (a loaded machine; a refusal changes nothing)."""
    state = s.state_dir
    (state / "hang.py").write_text(HANG)
    (state / "deploy.sh").write_text(DEPLOY.format(py=sys.executable, appctl=APPCTL))
    (state / "proxytest.sh").write_text(PROXY_TEST.format(test=s.nginx.test_command))
    await s.start_fleet("v1")
    transport = transport or {"transport": "local"}
    for i, host in enumerate(s.hosts):
        r = await s.api.post("/servers", json={"name": f"s{i}", "host": host, **transport})
        assert r.status_code == 201, r.text
        s.server_ids.append(r.json()["id"])
    r = await s.api.post("/servers", json={"name": "proxy", "host": proxy_host, **transport})
    assert r.status_code == 201, r.text
    proxy_id = r.json()["id"]
    body = {
        "name": "shop",
        "port": s.app_port,
        "health_path": "/health",
        "server_ids": s.server_ids,
        "current_version": "v1",
        "deploy_command": f"CONTRACT_STATE={state} sh {state}/deploy.sh {{host}} {{port}} {{version}}",
        "proxy": {
            **s.nginx.spec(server_id=proxy_id).model_dump(),
            "server_id": proxy_id,
            "test_command": f"CONTRACT_STATE={state} sh {state}/proxytest.sh",
        },
    }
    for _ in range(slow_shell_tries):
        r = await s.api.post("/applications", json=body)
        if r.status_code != 422 or "no shell within" not in r.text:
            break
    assert r.status_code == 201, r.text
    s.app = r.json()


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, sqlite_url: str, servers: int = 3, **extra: Any) -> AsyncIterator[Stack]:
    async with make_stack(
        tmp_path, sqlite_url, servers=servers, health_check_timeout=1.0, max_retry_backoff=2.0, **extra
    ) as s:
        yield s


async def wait_for(s: Stack, dep_id: int, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = await s.status(dep_id)
        if st["canary_status"] in states:
            return st
        assert time.monotonic() < deadline, f"deployment {dep_id} never reached {states}: {st}"
        await asyncio.sleep(0.2)  # each status read costs the API ~5 ms of CPU


async def assert_back_on_v1(s: Stack) -> None:
    assert await s.fleet_versions() == ["v1"] * len(s.hosts)
    load = LoadGenerator(s.proxy_url, rate=40).start()
    await asyncio.sleep(1.0)
    await load.stop()
    assert load.hits and {h.version for h in load.hits} == {"v1"}, {h.version for h in load.hits}


async def test_failing_deploy_command_rolls_back(tmp_path: Path, sqlite_url: str) -> None:
    """A deploy command that exits 1 is not retried blindly: rolled back at once, naming the command's error."""
    async with stack(tmp_path, sqlite_url) as s:
        await register(s)
        dep = (await s.deploy("v2-fail", FAST)).json()
        st = await wait_for(s, dep["id"], {"rolled_back", "failed", "completed"})
        assert st["canary_status"] == "rolled_back"
        assert any("exited 1" in r and "disk full" in r for r in st["reasons"]), st["reasons"]
        kinds = [e["kind"] for e in await s.events(dep["id"])]
        assert kinds.count("step_failed") == 1 and kinds[-1] == "rolled_back", kinds
        await assert_back_on_v1(s)


async def test_hanging_health_endpoint_rolls_back(tmp_path: Path, sqlite_url: str) -> None:
    """A canary whose /health accepts and never answers fails its health gate and is rolled back."""
    async with stack(tmp_path, sqlite_url) as s:
        await register(s)
        dep = (await s.deploy("v2-hang", FAST)).json()
        st = await wait_for(s, dep["id"], {"rolled_back", "failed", "completed"})
        assert st["canary_status"] == "rolled_back"
        assert any("did not pass its health check" in r and "no answer" in r for r in st["reasons"]), st[
            "reasons"
        ]
        await assert_back_on_v1(s)


async def test_proxy_refusing_its_config_test(tmp_path: Path, sqlite_url: str) -> None:
    """nginx -t fails mid-rollout: rollback starts, cannot cut traffic, is `failed` with the reason and keeps
    retrying; the live file stays the last good one; when nginx accepts again it finishes rolled_back."""
    async with stack(tmp_path, sqlite_url) as s:
        await register(s)
        load = LoadGenerator(s.proxy_url, rate=30).start()
        dep = (await s.deploy("v2", FAST)).json()
        await wait_for(s, dep["id"], {"monitoring"})
        good = Path(s.nginx.config_path).read_text()
        (s.state_dir / "refuse").touch()
        st = await wait_for(s, dep["id"], {"failed", "completed", "rolled_back"}, timeout=40)
        assert st["canary_status"] == "failed", st
        assert any("rollback cannot finish" in r and "refused by the test" in r for r in st["reasons"]), st
        # Never half-applied: the live file is the last configuration nginx accepted, and it is serving.
        assert Path(s.nginx.config_path).read_text() == good
        retries = sum(e["kind"] == "step_failed" for e in await s.events(dep["id"]))
        await asyncio.sleep(3)
        assert sum(e["kind"] == "step_failed" for e in await s.events(dep["id"])) > retries, (
            "gave up retrying"
        )
        (s.state_dir / "refuse").unlink()
        st = await wait_for(s, dep["id"], {"rolled_back"}, timeout=20)
        await load.stop()
        await assert_back_on_v1(s)
        assert [e["kind"] for e in await s.events(dep["id"])][-1] == "rolled_back"


async def test_ssh_to_servers_and_proxy_down(tmp_path: Path, sqlite_url: str) -> None:
    """sshd stops answering (servers and proxy host) mid-rollout: retried with backoff, then `failed` with
    the reason and still retrying; when sshd is back the rollback finishes and v1 serves everywhere."""
    hosts = loopback_hosts(3)
    with running_sshd(hosts[0], extra_hosts=hosts[1:]) as sshd:
        async with stack(
            tmp_path,
            sqlite_url,
            hosts=hosts,
            ssh_known_hosts=sshd.known_hosts,
            ssh_client_keys=[sshd.client_key],
            ssh_connect_timeout=1.0,  # the default is 10 s: the outage's retries would not fit the test
        ) as s:
            ssh = {"transport": "ssh", "ssh_port": sshd.port, "ssh_user": sshd.user}
            await register(s, ssh, hosts[0], slow_shell_tries=3)
            os.kill(sshd.process.pid, signal.SIGSTOP)  # the host stops answering: connections hang
            sshd.drop_connections()
            try:
                dep = (await s.deploy("v2", FAST)).json()
                st = await wait_for(s, dep["id"], {"failed", "completed", "rolled_back"}, timeout=60)
                assert st["canary_status"] == "failed", st
                assert any("rollback cannot finish" in r for r in st["reasons"]), st["reasons"]
                events = await s.events(dep["id"])
                failures = [e for e in events if e["kind"] == "step_failed"]
                assert len(failures) >= 4, [e["reasons"] for e in failures]
                assert any(e["kind"] == "rollback_started" for e in events)
            finally:
                os.kill(sshd.process.pid, signal.SIGCONT)
            st = await wait_for(s, dep["id"], {"rolled_back"}, timeout=30)
            await assert_back_on_v1(s)


async def test_changed_host_key_costs_nothing(tmp_path: Path, sqlite_url: str) -> None:
    """Servers whose SSH host key no longer matches known_hosts (a possible man-in-the-middle) are refused
    before anything changes on them: the refusal is permanent (one try, no transient retries), reported as a
    changed key, every server keeps its version and its place at the proxy, and the rollback, which has
    nothing to restore, ends rolled_back rather than failed."""
    *hosts, proxy_host = loopback_hosts(3)
    with running_sshd(proxy_host, extra_hosts=hosts) as sshd:
        impostor = Path(sshd.write_wrong_known_hosts(str(tmp_path / "known_hosts_wrong"))).read_text()
        wrong = impostor.split(" ", 1)[1]
        lines = [f"[{h}]:{sshd.port} {wrong}" for h in hosts]  # the servers' keys "changed"
        lines.append(f"[{proxy_host}]:{sshd.port} {sshd.host_key_pub}\n")  # the proxy host's did not
        Path(tmp_path / "known_hosts").write_text("".join(lines))
        async with stack(
            tmp_path,
            sqlite_url,
            servers=2,
            hosts=hosts,
            ssh_known_hosts=str(tmp_path / "known_hosts"),
            ssh_client_keys=[sshd.client_key],
        ) as s:
            ssh = {"transport": "ssh", "ssh_port": sshd.port, "ssh_user": sshd.user}
            await register(s, ssh, proxy_host)
            dep = (await s.deploy("v2", FAST)).json()
            st = await wait_for(s, dep["id"], {"failed", "completed", "rolled_back"}, timeout=60)
            assert st["canary_status"] == "rolled_back", st
            assert any("HOST KEY CHANGED" in r for r in st["reasons"]), st["reasons"]
            events = await s.events(dep["id"])
            assert [e["metrics"].get("attempt") for e in events if e["kind"] == "step_failed"] == [1]
            assert not any(e["kind"].startswith("server_") for e in events)
            assert await s.fleet_versions() == ["v1", "v1"]
            load = LoadGenerator(s.proxy_url, rate=40).start()
            await asyncio.sleep(1.0)
            await load.stop()
            served = {h.status for h in load.hits}
            assert served == {200}, served
