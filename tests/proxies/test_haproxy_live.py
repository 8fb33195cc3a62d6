"""HaproxyProxy against a real HAProxy (master-worker, admin socket) and real sample apps on 127.0.0.x."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import httpx
import pytest
from tests.fixtures.http import send_many

from canaryd.domain.split import split_weights
from canaryd.domain.types import Backend, Cohort, MatchRule
from canaryd.proxies.base import ProxyConfigError, RouteTable
from canaryd.proxies.haproxy import HaproxyProxy, parse_servers_state
from canaryd.transports.local import LocalTransport

if TYPE_CHECKING:
    from tests.fixtures.apps import AppFleet, AppInstance
    from tests.fixtures.haproxy import HaproxyInstance

pytestmark = pytest.mark.e2e


@dataclass
class Fleet:
    canary: AppInstance
    stable: list[AppInstance]

    def table(self, generation: int, canary_weight: int, stable_weight: int = 1) -> RouteTable:
        backends = [Backend(1, self.canary.host, self.canary.port, canary_weight, "canary")]
        backends += [
            Backend(i + 2, a.host, a.port, stable_weight, "stable") for i, a in enumerate(self.stable)
        ]
        return RouteTable(app_id=1, app_name="shop", backends=tuple(backends), generation=generation)

    def split(self, generation: int, percentage: float) -> RouteTable:
        w = split_weights(1, len(self.stable), percentage, 256)
        return self.table(generation, w.canary_weight, w.stable_weight)

    def cohort_of(self, address: str) -> Cohort | None:
        if address == self.canary.address:
            return "canary"
        return "stable" if address in {a.address for a in self.stable} else None


@pytest.fixture
def fleet(app_fleet: AppFleet) -> Fleet:
    """One canary at v2 on 127.0.0.2 and four stable instances at v1 on 127.0.0.3-6."""
    canary = app_fleet.start("127.0.0.2", "v2")
    return Fleet(canary, [app_fleet.start(f"127.0.0.{i}", "v1") for i in range(3, 7)])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The client canaryd would hand to the proxy adapter."""
    async with httpx.AsyncClient() as client:
        yield client


def make_proxy(haproxy: HaproxyInstance, http: httpx.AsyncClient, **overrides: object) -> HaproxyProxy:
    return HaproxyProxy(LocalTransport(), haproxy.spec(**overrides), "127.0.0.1", http)


async def send(haproxy: HaproxyInstance, n: int, concurrency: int = 8) -> list[tuple[int, str]]:
    """`n` requests through HAProxy, each on a new connection; (status, X-Version) of each."""
    return await send_many(haproxy.url, n, concurrency)


def canary_share(responses: list[tuple[int, str]]) -> float:
    return 100.0 * sum(1 for _, v in responses if v == "v2") / len(responses)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def test_split_through_haproxy(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """25 % for 1 canary and 4 stable servers gives the canary 25 % of requests (±5 points)."""
    proxy = make_proxy(haproxy_instance, http)
    table = fleet.split(1, 25.0)
    assert [b.weight for b in table.backends[:2]] == [4, 3]
    await proxy.apply(table)
    assert proxy.last_path == "reload"  # a fresh HAProxy has no backend yet
    assert await proxy.verify(table)
    responses = await send(haproxy_instance, 400)
    assert all(status == 200 for status, _ in responses)
    assert abs(canary_share(responses) - 25.0) <= 5.0


async def test_weights_change_through_the_runtime_api_without_reload(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """A weight-only change goes live over the admin socket in milliseconds: same master and worker, file
    rewritten (and accepted by the test command), canary drained at weight 0 and brought back."""
    proxy = make_proxy(haproxy_instance, http)
    await proxy.apply(fleet.table(1, canary_weight=1))
    assert await proxy.verify(fleet.table(1, canary_weight=1))
    master, workers = haproxy_instance.master_pid(), haproxy_instance.worker_pids()
    assert master is not None and len(workers) == 1

    timings: list[float] = []
    live: list[float] = []
    bare: list[float] = []
    for generation, percentage in enumerate([0.0, 10.0, 25.0, 50.0, 75.0, 0.0, 25.0], start=2):
        table = (
            fleet.split(generation, percentage) if percentage else fleet.table(generation, canary_weight=0)
        )
        started = time.perf_counter()
        await proxy.apply(table)
        assert await proxy.verify(table)
        timings.append((time.perf_counter() - started) * 1000)
        assert proxy.last_path == "runtime"
        assert proxy.live_ms is not None
        live.append(proxy.live_ms)
        started = time.perf_counter()
        await proxy.command("get weight canaryd_app_1/s1")
        bare.append((time.perf_counter() - started) * 1000)
        written = read_bytes(haproxy_instance.config_path).decode()
        assert (
            f"server s1 {fleet.canary.address} weight {table.backends[0].weight}  # canary server 1"
            in written
        )
        assert f"generation {generation}" in written
    assert haproxy_instance.master_pid() == master
    assert haproxy_instance.worker_pids() == workers  # no reload happened
    responses = await send(haproxy_instance, 400)
    assert abs(canary_share(responses) - 25.0) <= 5.0
    print(
        f"\nruntime path: weights live after median {statistics.median(live):.1f} ms (max {max(live):.1f}); "
        f"apply+verify median {statistics.median(timings):.1f} ms (max {max(timings):.1f}); "
        f"bare runtime API call median {statistics.median(bare):.2f} ms"
    )
    assert statistics.median(live) < 50
    assert statistics.median(timings) < 500


async def test_refused_config_leaves_previous_file(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """A configuration HAProxy refuses (an unresolvable server; or a broken main config on a weight change)
    raises ProxyConfigError and leaves the previous file byte-identical and the weights as they were."""
    proxy = make_proxy(haproxy_instance, http)
    good = fleet.split(1, 25.0)
    await proxy.apply(good)
    assert await proxy.verify(good)
    before = read_bytes(haproxy_instance.config_path)

    bad = RouteTable(1, "shop", (*good.backends, Backend(9, "no-such-host.invalid", 80, 1, "stable")), 2)
    with pytest.raises(ProxyConfigError, match="rejected"):
        await proxy.apply(bad)
    assert read_bytes(haproxy_instance.config_path) == before

    main = read_bytes(haproxy_instance.main_conf)
    with open(haproxy_instance.main_conf, "ab") as f:
        f.write(b"frontend broken\n  bind :not-a-port\n")
    try:
        with pytest.raises(ProxyConfigError):
            await proxy.apply(fleet.split(3, 50.0))
    finally:
        with open(haproxy_instance.main_conf, "wb") as f:
            f.write(main)
    assert read_bytes(haproxy_instance.config_path) == before
    assert await proxy.check(good)
    # No temp files left (the counter snapshots taken when a split was proven live stay, as a dot-file).
    assert sorted(os.listdir(haproxy_instance.confd)) == [".app.cfg.canaryd-traffic.json", "app.cfg"]


async def test_restart_keeps_the_split_and_old_files_are_noticed(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """After a restart from the same files check() stays True (the file has the runtime weights); a restart
    from an older file, or weights changed behind canaryd's back, make it False until re-applied."""
    proxy = make_proxy(haproxy_instance, http)
    await proxy.apply(fleet.table(1, canary_weight=1))
    assert await proxy.verify(fleet.table(1, canary_weight=1))
    old_file = read_bytes(haproxy_instance.config_path)
    table = fleet.split(2, 25.0)
    await proxy.apply(table)
    assert proxy.last_path == "runtime"

    haproxy_instance.restart()
    fresh = make_proxy(haproxy_instance, http)  # the engine makes a new adapter per tick
    assert await fresh.check(table)
    assert abs(canary_share(await send(haproxy_instance, 400)) - 25.0) <= 5.0

    await fresh.command("set weight canaryd_app_1/s1 0")
    assert not await fresh.check(table)
    await fresh.apply(table)
    assert fresh.last_path == "runtime"
    assert await fresh.verify(table)

    with open(haproxy_instance.config_path, "wb") as f:
        f.write(old_file)
    haproxy_instance.restart()
    assert not await fresh.check(table)
    await fresh.apply(table)
    assert await fresh.verify(table)
    assert await fresh.check(table)


async def test_no_errors_under_keepalive_load_while_weights_change(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """Twenty weight changes under keep-alive load (clients reusing connections) cost no request."""
    proxy = make_proxy(haproxy_instance, http)
    await proxy.apply(fleet.split(1, 10.0))
    assert await proxy.verify(fleet.split(1, 10.0))
    stop = asyncio.Event()
    results: list[int] = []

    async def client() -> None:
        async with httpx.AsyncClient(timeout=5) as c:  # keeps its connection alive between requests
            while not stop.is_set():
                try:
                    results.append((await c.get(haproxy_instance.url)).status_code)
                except httpx.HTTPError:
                    results.append(0)
                await asyncio.sleep(0.02)

    clients = [asyncio.create_task(client()) for _ in range(4)]
    try:
        for generation in range(2, 22):
            table = fleet.split(generation, [10.0, 50.0, 90.0][generation % 3])
            await proxy.apply(table)
            assert await proxy.verify(table)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert len(results) > 100
    assert results.count(200) == len(results), f"{len(results) - results.count(200)} failed requests"


async def test_traffic_from_counters(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """Without a log, `show stat` counters give per-cohort requests since the offset; reading the same
    offset twice (a retried tick) gives the same answer."""
    proxy = make_proxy(haproxy_instance, http)
    await proxy.apply(fleet.split(1, 25.0))
    assert await proxy.verify(fleet.split(1, 25.0))
    await send(haproxy_instance, 20)  # before the offset: nobody's
    reader = make_proxy(haproxy_instance, http)
    offset = await reader.traffic_offset()
    await send(haproxy_instance, 200)
    reading = await make_proxy(haproxy_instance, http).read_traffic(offset, fleet.cohort_of)
    again = await make_proxy(haproxy_instance, http).read_traffic(offset, fleet.cohort_of)
    canary, stable = reading.cohorts["canary"], reading.cohorts["stable"]
    assert canary.requests + stable.requests == 200
    assert abs(100 * canary.requests / 200 - 25.0) <= 7.5
    assert canary.errors == stable.errors == 0
    assert canary.quantile_ms(0.95) is not None  # averages stand in for latency
    assert again.cohorts["canary"].requests == canary.requests
    assert again.next_offset > reading.next_offset > offset
    later = await make_proxy(haproxy_instance, http).read_traffic(again.next_offset, fleet.cohort_of)
    assert later.cohorts["canary"].requests + later.cohorts["stable"].requests == 0


async def test_traffic_from_the_json_log(
    haproxy_logging: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """With access_log, HAProxy's JSON log lines give requests, errors and latency per cohort."""
    proxy = make_proxy(haproxy_logging, http)
    table = fleet.split(1, 25.0)
    await proxy.apply(table)
    assert await proxy.verify(table)
    offset = await proxy.traffic_offset()
    answers = await send(haproxy_logging, 200)
    assert [status for status, _ in answers] == [200] * 200
    assert haproxy_logging.log_file is not None
    deadline = time.monotonic() + 15  # HAProxy's log lines reach the file late on a loaded machine
    while True:
        reading = await proxy.read_traffic(offset, fleet.cohort_of)
        total = reading.cohorts["canary"].requests + reading.cohorts["stable"].requests
        if total >= 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    # What the file holds is the truth the reading must match: HAProxy's `log stdout` may drop a line when the
    # machine is loaded (seen once in CI: 199 of 200), which is HAProxy's loss, not the reader's.
    with open(haproxy_logging.log_file, "rb") as f:
        f.seek(offset)
        logged = [json.loads(line) for line in f.read().splitlines()]
    by_version = {
        "v2": sum(1 for e in logged if e["server"] == "s1"),
        "v1": sum(1 for e in logged if e["server"] != "s1"),
    }
    assert (reading.cohorts["canary"].requests, reading.cohorts["stable"].requests) == (
        by_version["v2"],
        by_version["v1"],
    )
    assert len(logged) >= 198, f"HAProxy logged {len(logged)} of 200 requests"
    assert abs(100 * reading.cohorts["canary"].requests / total - 25.0) <= 7.5
    assert sum(reading.cohorts["stable"].latency_buckets.values()) == reading.cohorts["stable"].requests
    assert reading.next_offset == os.path.getsize(haproxy_logging.log_file)


async def test_servers_state_reads_back(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """The admin socket's `show servers state` lists every declared server with its weight."""
    proxy = make_proxy(haproxy_instance, http)
    await proxy.apply(fleet.table(1, canary_weight=0))
    assert await proxy.verify(fleet.table(1, canary_weight=0))
    state = parse_servers_state(await proxy.command("show servers state canaryd_app_1"))
    assert state is not None
    assert {n: s.weight for n, s in state.items()} == {"s1": 0, "s2": 1, "s3": 1, "s4": 1, "s5": 1}
    assert parse_servers_state(await proxy.command("show servers state canaryd_app_99")) is None


async def versions_seen(client: httpx.AsyncClient, url: str, n: int, **headers: str) -> list[str]:
    """Sends `n` requests; the X-Version of each (a non-200 answer fails the test)."""
    seen = []
    for _ in range(n):
        r = await client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        seen.append(r.headers.get("X-Version", ""))
    return seen


async def test_sticky_clients_keep_their_server_and_leave_a_cut_canary(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """sticky: 40 clients × 15 requests at 25 % each see one version, ≈25 % of them the canary; after the
    canary is cut to weight 0 (a runtime change, no reload) its pinned clients are served and re-pinned by
    stable."""
    proxy = make_proxy(haproxy_instance, http, sticky=True)
    await proxy.apply(fleet.table(1, canary_weight=1))
    assert await proxy.verify(fleet.table(1, canary_weight=1))
    master, workers = haproxy_instance.master_pid(), haproxy_instance.worker_pids()
    table = fleet.split(2, 25.0)
    await proxy.apply(table)
    assert proxy.last_path == "runtime"
    assert await proxy.verify(table)

    clients = [httpx.AsyncClient(headers={"Connection": "close"}, timeout=5) for _ in range(40)]
    try:
        seen = await asyncio.gather(*(versions_seen(c, haproxy_instance.url, 15) for c in clients))
        assert all(len(set(s)) == 1 for s in seen), [sorted(set(s)) for s in seen]
        on_canary = [c for c, s in zip(clients, seen, strict=True) if s[0] == "v2"]
        share = 100 * len(on_canary) / len(clients)
        print(f"\nsticky at 25 %: {len(on_canary)} of {len(clients)} clients on the canary ({share:.0f} %)")
        assert abs(share - 25.0) <= 15.0
        assert on_canary and all(c.cookies.get("canaryd_1") == "s1" for c in on_canary)

        cut = fleet.table(3, canary_weight=0)  # rollback: the canary gets nothing, pinned clients included
        await proxy.apply(cut)
        assert proxy.last_path == "runtime"
        assert await proxy.verify(cut)
        after = await asyncio.gather(*(versions_seen(c, haproxy_instance.url, 5) for c in on_canary))
        assert all(s == ["v1"] * 5 for s in after), after
        assert all(c.cookies.get("canaryd_1") in {"s2", "s3", "s4", "s5"} for c in on_canary)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert haproxy_instance.master_pid() == master
    assert haproxy_instance.worker_pids() == workers  # weight changes only: no reload


async def test_forced_routing_header(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """force_header: `always` → canary, `never` → stable (case-insensitive, over a sticky cookie), counted
    in the traffic; with the canary at weight 0 `always` gets stable with 200; weight changes reload nothing."""
    proxy = make_proxy(haproxy_instance, http, sticky=True, force_header="X-Canary")
    table = fleet.split(1, 25.0)
    await proxy.apply(table)
    assert await proxy.verify(table)
    master, workers = haproxy_instance.master_pid(), haproxy_instance.worker_pids()
    offset = await proxy.traffic_offset()
    async with httpx.AsyncClient(headers={"Connection": "close"}, timeout=5) as c:
        assert await versions_seen(c, haproxy_instance.url, 20, **{"X-Canary": "always"}) == ["v2"] * 20
        assert await versions_seen(c, haproxy_instance.url, 20, **{"X-Canary": "NEVER"}) == ["v1"] * 20
        assert await versions_seen(c, haproxy_instance.url, 5, **{"X-Canary": "Always"}) == ["v2"] * 5
        c.cookies.set("canaryd_1", "s1")  # pinned to the canary: the header still wins
        assert await versions_seen(c, haproxy_instance.url, 5, **{"X-Canary": "never"}) == ["v1"] * 5
    reading = await proxy.read_traffic(offset, fleet.cohort_of)
    assert (reading.cohorts["canary"].requests, reading.cohorts["stable"].requests) == (25, 25)

    for generation, table in enumerate([fleet.table(2, canary_weight=0), fleet.split(3, 50.0)], start=2):
        await proxy.apply(table)
        assert proxy.last_path == "runtime"
        assert await proxy.verify(table)
        async with httpx.AsyncClient(headers={"Connection": "close"}, timeout=5) as c:
            forced = await versions_seen(c, haproxy_instance.url, 10, **{"X-Canary": "always"})
        assert forced == (["v1"] * 10 if generation == 2 else ["v2"] * 10)  # no canary: stable, 200
    assert haproxy_instance.master_pid() == master
    assert haproxy_instance.worker_pids() == workers


async def test_a_reload_haproxy_drops_is_sent_again(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """HAProxy 2.6 drops a reload signal that arrives while it is still reloading (here: another
    application's reload a few milliseconds earlier). The change would never go live; verify sees the previous
    configuration, sends the reload again, and the new one is live well within its timeout."""
    caplog.set_level(logging.INFO, "canaryd.proxies.haproxy")
    # Without a test command, apply's reload follows the other one within the milliseconds HAProxy needs to
    # re-execute; the same happens with one when two deployments' ticks run side by side.
    proxy = make_proxy(haproxy_instance, http, test_command=None)
    base = fleet.table(1, 1)
    await proxy.apply(base)
    assert await proxy.verify(base)
    # The other reload comes 0 to 40 ms before apply's own (HAProxy loses the later signal in that window
    # when it arrives after the master began to re-execute and before it is ready for signals again).
    for attempt, delay in enumerate([0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04] * 2):
        # One more server each time (at weight 0, nothing listens there): a new server needs a reload.
        extra = Backend(6 + attempt, "127.0.0.1", 9 + attempt, 0, "stable")
        table = RouteTable(1, "shop", (*base.backends, extra), 2 + attempt)
        with open(haproxy_instance.pid_file) as f:
            os.kill(int(f.read()), signal.SIGUSR2)  # another application's reload
        await asyncio.sleep(delay)
        started = time.monotonic()
        await proxy.apply(table)
        assert proxy.last_path == "reload"
        assert await proxy.verify(table), f"attempt {attempt}: the change never went live"
        if "reloading again" in caplog.text:
            print(
                f"\nlost reload on attempt {attempt} ({delay} s), live after {time.monotonic() - started:.2f} s"
            )
            break
    assert "reloading again" in caplog.text, "HAProxy lost no reload in 14 tries: nothing was shown"


@pytest.mark.solo
async def test_restart_mid_canary_under_cpu_pressure(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient, app_fleet: AppFleet
) -> None:
    """HAProxy restarted mid-canary (30 %) while every core is busy and the canary instance itself restarts
    (unreachable for the first 0.3 s of the new HAProxy): clients are back at 30 % at once.

    With HAProxy's active health checks (`check`, as canaryd rendered before) this came back at 0 %: HAProxy
    starts a checked server at the lowest "up" health, so the one failed first check marked the canary
    DOWN, and it took rise x inter (~4 s) to return although it answered 0.3 s after the start (measured:
    first canary answer 3.6 s after the restart, 14 of 159 requests in 5 s). canaryd renders no `check`."""
    proxy = make_proxy(haproxy_instance, http)
    thirty = fleet.table(3, 12, 7)  # 12 / (12 + 4 x 7) = 30 %
    await proxy.apply(fleet.table(1, 1))
    await proxy.apply(thirty)
    assert await proxy.verify(thirty)
    hog = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 5: pass\n"
    hogs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", hog) for _ in range(os.cpu_count() or 2)
    ]
    try:
        fleet.canary.stop()
        await asyncio.to_thread(haproxy_instance.restart)
        await asyncio.sleep(0.3)
        fleet.canary = await asyncio.to_thread(app_fleet.start, fleet.canary.host, "v2", fleet.canary.port)
        restarted = time.monotonic()
        seen: list[tuple[float, str]] = []
        while time.monotonic() - restarted < 4.5:
            r = await http.get(haproxy_instance.url, headers={"Connection": "close"})
            assert r.status_code == 200, r.text
            seen.append((time.monotonic() - restarted, r.headers["x-version"]))
    finally:
        for h in hogs:
            await h.wait()
    assert await proxy.check(thirty)
    first = next(t for t, v in seen if v == "v2")
    share = 100 * sum(v == "v2" for _, v in seen) / len(seen)
    print(
        f"\nHAProxy restart under CPU pressure: first canary answer {first:.2f} s, share {share:.1f} % of {len(seen)}"
    )
    assert first < 1.0, seen[:20]
    assert len(seen) >= 30 and abs(share - 30.0) <= 12.0, share


async def test_ab_rules_route_and_the_cut_does_not_wait_for_the_reload(
    haproxy_instance: HaproxyInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """Strategy ab: matching requests (header, cookie) reach the canary and nothing else does; ending the
    test takes the canary out over the admin socket before the file is tested and HAProxy reloaded, so with
    a test command that takes a second, matching requests already get stable while it runs."""
    proxy = make_proxy(haproxy_instance, http, test_command="sleep 1")
    rules = (MatchRule("header", "X-Beta", "equals", "1"), MatchRule("cookie", "plan", "regex", "^pro"))
    base = fleet.table(1, 1)
    ab = RouteTable(1, "shop", (replace(base.backends[0], match=rules), *base.backends[1:]), 2)
    await proxy.apply(ab)
    assert await proxy.verify(ab)
    async with httpx.AsyncClient(headers={"Connection": "close"}, timeout=5) as c:
        assert await versions_seen(c, haproxy_instance.url, 10, **{"X-Beta": "1"}) == ["v2"] * 10
        assert await versions_seen(c, haproxy_instance.url, 10, Cookie="a=1; plan=pro-max") == ["v2"] * 10
        assert await versions_seen(c, haproxy_instance.url, 20, **{"X-Beta": "11"}) == ["v1"] * 20
        assert await versions_seen(c, haproxy_instance.url, 20, Cookie="plan=free") == ["v1"] * 20
        cut = RouteTable(1, "shop", base.backends[1:], 3)
        started = time.monotonic()
        applying = asyncio.create_task(proxy.apply(cut))
        await asyncio.sleep(0.2)
        assert not applying.done(), "the test command should still be running"
        assert await versions_seen(c, haproxy_instance.url, 10, **{"X-Beta": "1"}) == ["v1"] * 10
        during = time.monotonic() - started
        await applying
        assert await proxy.verify(cut)
        assert await versions_seen(c, haproxy_instance.url, 10, **{"X-Beta": "1"}) == ["v1"] * 10
    print(f"\nHAProxy A/B cut: matching requests on stable {during:.2f} s into an apply that takes over 1 s")
