"""NginxProxy against a real nginx master and real sample-app instances on 127.0.0.x."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest
from tests.fixtures.http import send_many

from canaryd.domain.types import Backend, Cohort
from canaryd.proxies.base import ProxyConfigError, ProxyUnavailableError, RouteTable
from canaryd.proxies.nginx import NginxProxy, render_nginx
from canaryd.proxies.nginx_workers import KnownMasters, accepting_workers, snapshot
from canaryd.transports.base import CommandResult, TransportError
from canaryd.transports.local import LocalTransport

if TYPE_CHECKING:
    from tests.fixtures.apps import AppFleet, AppInstance
    from tests.fixtures.nginx import NginxInstance
    from tests.fixtures.sshd import SshServer

    from canaryd.transports.ssh import SshPool

pytestmark = pytest.mark.e2e


@dataclass
class Fleet:
    canary: AppInstance
    stable: list[AppInstance]

    def table(
        self, generation: int, canary_weight: int = 4, stable_weight: int = 3, app_id: int = 1
    ) -> RouteTable:
        backends = (
            [Backend(1, self.canary.host, self.canary.port, canary_weight, "canary")] if canary_weight else []
        )
        backends += [
            Backend(i + 2, a.host, a.port, stable_weight, "stable") for i, a in enumerate(self.stable)
        ]
        return RouteTable(app_id=app_id, app_name="shop", backends=tuple(backends), generation=generation)

    def cohort_of(self, address: str) -> Cohort | None:
        if address == self.canary.address:
            return "canary"
        if address in {a.address for a in self.stable}:
            return "stable"
        return None


def start_fleet(app_fleet: AppFleet, canary_version: str) -> Fleet:
    canary = app_fleet.start("127.0.0.2", canary_version)
    stable = [app_fleet.start(f"127.0.0.{i}", "v1") for i in range(3, 7)]
    return Fleet(canary, stable)


@pytest.fixture
def fleet(app_fleet: AppFleet) -> Fleet:
    """One canary at v2 on 127.0.0.2 and four stable instances at v1 on 127.0.0.3-6."""
    return start_fleet(app_fleet, "v2")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The client canaryd would hand to the proxy adapter."""
    async with httpx.AsyncClient() as client:
        yield client


def make_proxy(
    nginx: NginxInstance,
    http: httpx.AsyncClient,
    one_command: bool = False,
    masters: KnownMasters | None = None,
    **spec_overrides: object,
) -> NginxProxy:
    """`one_command`: install, test and reload in one command (the SSH transport's way) over the local one;
    `masters`: the memory of masters shared between adapters, as a runtime's (a fresh one if None)."""
    return NginxProxy(
        LocalTransport(),
        nginx.spec(**spec_overrides),
        "127.0.0.1",
        http,
        one_command=one_command,
        masters=masters,
    )


#: The tests of a change's safety run both ways: the file steps one by one, and one command.
both_ways = pytest.mark.parametrize("one_command", [False, True], ids=["steps", "one_command"])


async def send(nginx: NginxInstance, n: int, concurrency: int = 8) -> list[tuple[int, str]]:
    """`n` requests through nginx, each on a new connection; (status, X-Version) of each."""
    return await send_many(f"http://127.0.0.1:{nginx.port}/", n, concurrency)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def logged(path: str, lines: int, timeout: float = 5.0) -> None:
    """Waits until `path` holds at least `lines` complete lines: nginx writes a request's log line after
    its response, so a client can be answered before the line is there (seen on a loaded machine)."""
    for _ in range(int(timeout / 0.02)):
        if os.path.exists(path) and read_bytes(path).count(b"\n") >= lines:
            return
        await asyncio.sleep(0.02)


def canary_share(responses: list[tuple[int, str]], canary_version: str) -> float:
    return 100.0 * sum(1 for _, v in responses if v == canary_version) / len(responses)


@both_ways
async def test_weights_give_the_requested_share(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, one_command: bool
) -> None:
    """1 canary at weight 4 and 4 stable at weight 3 give the canary 25 % of requests (±5 points)."""
    proxy = make_proxy(nginx_instance, http, one_command)
    table = fleet.table(generation=1)
    await proxy.apply(table)
    assert await proxy.verify(table)
    responses = await send(nginx_instance, 400)
    assert all(status == 200 for status, _ in responses)
    assert abs(canary_share(responses, "v2") - 25.0) <= 5.0
    assert {v for _, v in responses} == {"v1", "v2"}


async def test_zero_percent_leaves_canary_out(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """A table without the canary sends it nothing; the next generation brings it back."""
    proxy = make_proxy(nginx_instance, http)
    await proxy.apply(fleet.table(generation=1, canary_weight=0, stable_weight=1))
    assert await proxy.verify(fleet.table(generation=1))
    assert canary_share(await send(nginx_instance, 40), "v2") == 0.0
    table = fleet.table(generation=2, canary_weight=1, stable_weight=1)
    await proxy.apply(table)
    assert await proxy.verify(table)
    assert canary_share(await send(nginx_instance, 100), "v2") == pytest.approx(20.0, abs=5.0)


async def test_verify_tells_new_from_old(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """verify() is True for the applied generation and False for one nginx never loaded."""
    proxy = NginxProxy(LocalTransport(), nginx_instance.spec(), "127.0.0.1", http, verify_timeout=0.3)
    await proxy.apply(fleet.table(generation=5))
    assert await proxy.verify(fleet.table(generation=5))
    assert not await proxy.verify(fleet.table(generation=6))


@both_ways
async def test_verify_waits_until_old_workers_stop_accepting(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, one_command: bool
) -> None:
    """After a reload, verify() returns only once every worker that accepted before it has exited or is
    shutting down (nginx's master lets them accept for 100 ms more), found through the probe and /proc."""
    transport = LocalTransport()
    first, registered = make_proxy(nginx_instance, http, one_command), fleet.table(generation=1)
    await first.apply(registered)
    assert await first.verify(registered)  # the probe exists only once that reload is done
    url = f"http://127.0.0.1:{nginx_instance.port}/.canaryd/generation"
    before = await snapshot(http, url, transport)
    assert before is not None and before[0] == nginx_instance.master_pid() and before[1]
    proxy = make_proxy(nginx_instance, http, one_command)
    table = fleet.table(generation=2, canary_weight=0, stable_weight=1)
    await proxy.apply(table)
    assert await proxy.verify(table)
    if one_command:  # listed by the install script itself, just before its reload
        assert proxy._before_reload is not None and proxy._before_reload[0] == before[0]
    still = await accepting_workers(transport, before[0])
    assert still is not None and still and not still & before[1]
    assert canary_share(await send(nginx_instance, 40), "v2") == 0.0


async def test_verify_catches_a_reload_nginx_refused(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """A reload that passes -t but that the master cannot carry out (port taken) is caught by verify()."""
    # The default verify timeout where verify must succeed (a loaded machine answers late); 0.5 s where it
    # must fail, so that the test does not wait out the default.
    proxy = NginxProxy(LocalTransport(), nginx_instance.spec(), "127.0.0.1", http)
    await proxy.apply(fleet.table(generation=1))
    # Another listener holds the port the new configuration wants: `nginx -t` passes, the reload does not.
    taken = fleet.canary
    moved = NginxProxy(
        LocalTransport(), nginx_instance.spec(listen=taken.address), taken.host, http, verify_timeout=0.5
    )
    table = fleet.table(generation=2)
    await moved.apply(table)  # `nginx -s reload` exits 0 all the same
    assert not await moved.verify(table)
    assert await proxy.verify(fleet.table(generation=1))


@both_ways
async def test_rejected_config_keeps_old_file_and_split(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, one_command: bool
) -> None:
    """A configuration `nginx -t` refuses raises ProxyConfigError; the old file stays byte-identical and live."""
    good = make_proxy(nginx_instance, http, one_command)
    await good.apply(fleet.table(generation=1))
    assert await good.verify(fleet.table(generation=1))  # old workers gone before traffic is counted below
    before = read_bytes(nginx_instance.config_path)
    missing_dir = os.path.join(nginx_instance.dir, "no-such-dir", "access.log")
    bad = make_proxy(nginx_instance, http, one_command, access_log=missing_dir)
    with pytest.raises(ProxyConfigError, match="No such file or directory"):
        await bad.apply(fleet.table(generation=2, canary_weight=1, stable_weight=100))
    assert read_bytes(nginx_instance.config_path) == before
    assert sorted(os.listdir(os.path.dirname(nginx_instance.config_path))) == ["app.conf"]
    assert await good.verify(fleet.table(generation=1))
    assert abs(canary_share(await send(nginx_instance, 160), "v2") - 25.0) <= 5.0


@both_ways
async def test_rejected_first_config_leaves_no_file(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, one_command: bool
) -> None:
    """When there was no file before, a refused configuration is removed again."""
    bad = make_proxy(
        nginx_instance, http, one_command, access_log=os.path.join(nginx_instance.dir, "nope", "a.log")
    )
    with pytest.raises(ProxyConfigError):
        await bad.apply(fleet.table(generation=1))
    assert os.listdir(os.path.dirname(nginx_instance.config_path)) == []


@both_ways
async def test_failed_reload_restores_old_file(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, one_command: bool
) -> None:
    """A reload command that fails puts the previous bytes back and reports nginx's words."""
    good = make_proxy(nginx_instance, http, one_command)
    await good.apply(fleet.table(generation=1))
    before = read_bytes(nginx_instance.config_path)
    bad = make_proxy(nginx_instance, http, one_command, reload_command="echo 'reload refused' >&2; exit 3")
    with pytest.raises(ProxyConfigError, match="reload refused"):
        await bad.apply(fleet.table(generation=2))
    assert read_bytes(nginx_instance.config_path) == before


@both_ways
async def test_without_listen_verify_reports_test_and_reload(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, one_command: bool
) -> None:
    """Without a server block verify() can only say whether test and reload of that generation passed."""
    proxy = make_proxy(nginx_instance, http, one_command, listen=None)
    table = fleet.table(generation=3)
    assert not await proxy.verify(table)
    await proxy.apply(table)
    assert await proxy.verify(table)
    assert not await proxy.verify(fleet.table(generation=4))
    assert read_bytes(nginx_instance.config_path) == render_nginx(table, proxy.spec).encode()


async def test_read_traffic_counts_per_cohort(
    nginx_instance: NginxInstance, app_fleet: AppFleet, http: httpx.AsyncClient
) -> None:
    """Log counts per cohort match the requests sent, with a bad canary's 500s counted as errors."""
    fleet = start_fleet(app_fleet, "v2-bad")
    proxy = make_proxy(nginx_instance, http)
    table = fleet.table(generation=1)
    await proxy.apply(table)
    assert await proxy.verify(table)
    responses = await send(nginx_instance, 400)
    seen = Counter((v, status >= 500) for status, v in responses)
    reading = await proxy.read_traffic(0, fleet.cohort_of)
    canary, stable = reading.cohorts["canary"], reading.cohorts["stable"]
    assert canary.requests == seen[("v2-bad", False)] + seen[("v2-bad", True)]
    assert canary.errors == seen[("v2-bad", True)] > 0
    assert stable.requests == seen[("v1", False)] and stable.errors == 0
    assert canary.requests + stable.requests == 400
    assert reading.next_offset == os.path.getsize(nginx_instance.access_log)
    again = await proxy.read_traffic(reading.next_offset, fleet.cohort_of)
    assert again.cohorts["canary"].requests == again.cohorts["stable"].requests == 0
    assert again.next_offset == reading.next_offset


async def test_read_traffic_partial_line_and_rotation(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """A trailing partial line is left for the next read; a rotated (smaller) log is read from its start."""
    proxy = make_proxy(nginx_instance, http)
    table = fleet.table(generation=1, canary_weight=1, stable_weight=1)
    await proxy.apply(table)
    # `nginx -s reload` returns before the master has bound the new listen port: wait until it serves.
    assert await proxy.verify(table)
    await send(nginx_instance, 50)
    await logged(nginx_instance.access_log, 50)
    first = await proxy.read_traffic(0, fleet.cohort_of)
    assert first.cohorts["canary"].requests + first.cohorts["stable"].requests == 50

    log = nginx_instance.access_log
    partial = f'{{"time":"1.0","status":"503","request_time":"0.001","upstream_addr":"{fleet.canary.address}",'.encode()
    with open(log, "ab") as f:
        f.write(partial)
    held = await proxy.read_traffic(first.next_offset, fleet.cohort_of)
    assert held.next_offset == first.next_offset
    assert held.cohorts["canary"].requests == 0
    with open(log, "ab") as f:
        f.write(b'"upstream_status":"503","upstream_response_time":"0.001","method":"GET"}\n')
    done = await proxy.read_traffic(held.next_offset, fleet.cohort_of)
    assert (done.cohorts["canary"].requests, done.cohorts["canary"].errors) == (1, 1)
    assert done.next_offset == os.path.getsize(log)

    # copytruncate-style rotation: the file is emptied in place, nginx keeps appending to it.
    os.truncate(log, 0)
    await send(nginx_instance, 4)
    await logged(log, 4)
    truncated = await proxy.read_traffic(done.next_offset, fleet.cohort_of)
    assert truncated.cohorts["canary"].requests + truncated.cohorts["stable"].requests == 4
    assert truncated.next_offset == os.path.getsize(log)

    # rename-and-reopen rotation: the new file starts empty, the workers switch to it a moment later.
    os.rename(log, log + ".1")
    reopen = await LocalTransport().run(
        f"{nginx_instance.binary} -c {nginx_instance.main_conf} -s reopen", 10
    )
    assert reopen.ok, reopen.tail()
    for _ in range(500):
        await send(nginx_instance, 1)
        if os.path.exists(log) and os.path.getsize(log) > 0:
            break
        await asyncio.sleep(0.01)
    await send(nginx_instance, 3)
    # nginx writes a request's log line after its response: wait until the new file stops growing.
    in_new_file = -1
    for _ in range(100):
        if (now := read_bytes(log).count(b"\n")) == in_new_file:
            break
        in_new_file = now
        await asyncio.sleep(0.05)
    rotated = await proxy.read_traffic(done.next_offset, fleet.cohort_of)
    assert rotated.cohorts["canary"].requests + rotated.cohorts["stable"].requests == in_new_file >= 4
    assert rotated.next_offset == os.path.getsize(log)


async def test_read_traffic_missing_log(nginx_instance: NginxInstance, http: httpx.AsyncClient) -> None:
    """A log that does not exist (yet) reads as no traffic and keeps the offset."""
    proxy = make_proxy(nginx_instance, http)
    reading = await proxy.read_traffic(123, lambda _: "stable")
    assert reading.next_offset == 123
    assert reading.cohorts["canary"].requests == reading.cohorts["stable"].requests == 0


async def test_apply_to_verify_latency(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """apply()+verify() takes a bounded time; compared with a bare `nginx -s reload` and a poll."""
    proxy = make_proxy(nginx_instance, http)
    transport = LocalTransport()
    ours: list[float] = []
    for gen in range(1, 21):
        table = fleet.table(generation=gen, canary_weight=1 + gen % 4)
        t0 = time.perf_counter()
        await proxy.apply(table)
        assert await proxy.verify(table)
        ours.append((time.perf_counter() - t0) * 1000)
    first_new: list[float] = []
    last_old: list[float] = []
    url = f"http://127.0.0.1:{nginx_instance.port}/.canaryd/generation"
    for gen in range(21, 41):
        with open(nginx_instance.config_path, "w") as f:
            f.write(render_nginx(fleet.table(generation=gen), proxy.spec))
        t0 = time.perf_counter()
        assert (await transport.run(nginx_instance.reload_command, 10)).ok
        seen_new: float | None = None
        old_at = 0.0
        # Poll until the new generation answers, then 400 ms more to see how long the old one still does.
        while seen_new is None or time.perf_counter() - t0 < seen_new / 1000 + 0.4:
            r = await http.get(url, headers={"Connection": "close"})
            at = (time.perf_counter() - t0) * 1000
            if r.text == f"{gen}\n":
                seen_new = at if seen_new is None else seen_new
            else:
                old_at = at
            await asyncio.sleep(0.01)
        first_new.append(seen_new)
        last_old.append(old_at)

    def fig(xs: list[float]) -> str:
        return f"median {statistics.median(xs):.1f} min {min(xs):.1f} max {max(xs):.1f}"

    print(
        f"\napply()+verify() ms: {fig(ours)}"
        f"\nbare reload -> first new answer ms: {fig(first_new)}"
        f"\nbare reload -> last old answer ms: {fig(last_old)}"
    )
    assert statistics.median(ours) < 1000


class LostOnReload(LocalTransport):
    """The connection to the proxy's host drops when the reload command is sent."""

    async def run(self, command: str, timeout: float) -> CommandResult:
        if "-s reload" in command:
            raise TransportError("connection lost")
        return await super().run(command, timeout)


async def test_transport_failure_is_unavailable_and_restores(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """A transport failure mid-apply raises ProxyUnavailableError and puts the previous file back."""
    await make_proxy(nginx_instance, http).apply(fleet.table(generation=1))
    before = read_bytes(nginx_instance.config_path)
    proxy = NginxProxy(LostOnReload(), nginx_instance.spec(), "127.0.0.1", http)
    with pytest.raises(ProxyUnavailableError, match="connection lost"):
        await proxy.apply(fleet.table(generation=2))
    assert read_bytes(nginx_instance.config_path) == before
    assert sorted(os.listdir(os.path.dirname(nginx_instance.config_path))) == ["app.conf"]


def listing(nginx: NginxInstance) -> list[str]:
    return sorted(os.listdir(os.path.dirname(nginx.config_path)))


async def test_one_command_timeout_puts_back(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install script that times out in its test (killed with its process group) is followed by the
    put-back: the previous file in place, no temp or kept file left, nothing reloaded."""
    good = make_proxy(nginx_instance, http, True)
    await good.apply(fleet.table(generation=1))
    before = read_bytes(nginx_instance.config_path)
    monkeypatch.setattr("canaryd.proxies.nginx.COMMAND_TIMEOUT", 0.5)
    slow = make_proxy(nginx_instance, http, True, test_command="sleep 5")
    with pytest.raises(ProxyUnavailableError, match="timed out"):
        await slow.apply(fleet.table(generation=2))
    assert read_bytes(nginx_instance.config_path) == before
    assert listing(nginx_instance) == ["app.conf"]
    assert await good.verify(fleet.table(generation=1))


async def test_one_command_cancelled_puts_back(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """Cancelled while the script runs its test: the previous file is put back, nothing else is left."""
    await make_proxy(nginx_instance, http, True).apply(fleet.table(generation=1))
    before = read_bytes(nginx_instance.config_path)
    slow = make_proxy(nginx_instance, http, True, test_command="sleep 5")
    task = asyncio.ensure_future(slow.apply(fleet.table(generation=2)))
    deadline = time.monotonic() + 5
    while read_bytes(nginx_instance.config_path) == before:  # the new file is in place, the test runs
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert read_bytes(nginx_instance.config_path) == before
    assert listing(nginx_instance) == ["app.conf"]


async def test_one_command_remove(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """remove() in one command deletes the file and reloads; a refused test puts the file back."""
    proxy = make_proxy(nginx_instance, http, True)
    await proxy.apply(fleet.table(generation=1))
    before = read_bytes(nginx_instance.config_path)
    refused = make_proxy(nginx_instance, http, True, test_command="echo 'no way' >&2; exit 1")
    with pytest.raises(ProxyConfigError, match="no way"):
        await refused.remove(1)
    assert read_bytes(nginx_instance.config_path) == before
    await proxy.remove(1)
    assert listing(nginx_instance) == []
    assert await proxy.verify_removed(1)


async def test_one_command_odd_content_takes_the_steps(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that cannot travel inside a command (here: too large) is installed step by step instead."""
    monkeypatch.setattr("canaryd.proxies.files.INLINE_LIMIT", 10)
    proxy = make_proxy(nginx_instance, http, True)
    commands: list[str] = []
    run = proxy.transport.run

    async def spy(command: str, timeout: float) -> CommandResult:
        commands.append(command)
        return await run(command, timeout)

    monkeypatch.setattr(proxy.transport, "run", spy)
    table = fleet.table(generation=1)
    await proxy.apply(table)
    assert await proxy.verify(table)
    assert commands == [nginx_instance.test_command, nginx_instance.reload_command]


async def test_one_command_over_ssh(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, ssh_pool: SshPool, sshd: SshServer
) -> None:
    """Over the SSH transport the change is one command by default: applied, workers listed before the
    reload, proven live; a refused configuration leaves the old file alone."""
    transport = ssh_pool.transport(sshd.host, sshd.port, sshd.user)
    masters = KnownMasters()
    proxy = NginxProxy(transport, nginx_instance.spec(), "127.0.0.1", http, masters=masters)
    assert proxy.one_command
    await proxy.apply(fleet.table(generation=1))
    assert await proxy.verify(fleet.table(generation=1))
    again = NginxProxy(transport, nginx_instance.spec(), "127.0.0.1", http, masters=masters)
    table = fleet.table(generation=2, canary_weight=0, stable_weight=1)
    await again.apply(table)
    master = nginx_instance.master_pid()
    assert again._before_reload is not None and again._before_reload[0] == master
    assert await again.verify(table)
    assert masters.get(f"http://127.0.0.1:{nginx_instance.port}/.canaryd/generation") == master
    # The next change lists that master's children without asking the probe first.
    third = NginxProxy(transport, nginx_instance.spec(), "127.0.0.1", http, masters=masters)
    table = fleet.table(generation=3, canary_weight=0, stable_weight=1)
    await third.apply(table)
    assert third._before_reload is not None and third._before_reload[0] == master
    assert await third.verify(table)
    before = read_bytes(nginx_instance.config_path)
    missing = os.path.join(nginx_instance.dir, "nope", "a.log")
    bad = NginxProxy(transport, nginx_instance.spec(access_log=missing), "127.0.0.1", http)
    with pytest.raises(ProxyConfigError, match="No such file or directory"):
        await bad.apply(fleet.table(generation=4))
    assert read_bytes(nginx_instance.config_path) == before
    assert listing(nginx_instance) == ["app.conf"]
    assert canary_share(await send(nginx_instance, 40), "v2") == 0.0


async def test_one_command_stale_master_is_not_trusted(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """A remembered master that no longer serves the probe's URL (here: this test's own process) proves
    nothing: that change falls back to the settle time and the master is forgotten."""
    masters = KnownMasters()
    await make_proxy(nginx_instance, http, True, masters).apply(fleet.table(generation=1))
    url = f"http://127.0.0.1:{nginx_instance.port}/.canaryd/generation"
    masters.remember(url, os.getpid())
    proxy = make_proxy(nginx_instance, http, True, masters)
    table = fleet.table(generation=2)
    await proxy.apply(table)
    assert proxy._before_reload is None
    assert masters.get(url) is None
    assert await proxy.verify(table)
