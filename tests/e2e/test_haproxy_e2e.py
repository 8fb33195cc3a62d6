"""End to end through HAProxy: canaryd (embedded) drives a real HAProxy in front of five real app instances
while clients reuse keep-alive connections; HAProxy is restarted in the middle of the canary."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fixtures.haproxy import HaproxyInstance, start_haproxy
from tests.fixtures.http import Pool, Target
from tests.fixtures.stack import LoadGenerator, Stack, make_stack

from canaryd.proxies.haproxy import parse_servers_state
from canaryd.transports.local import LocalTransport

STAGES = {"stages": [10, 25, 50, 100], "stage_duration": 4, "health_check_interval": 1, "min_requests": 10}


def event_time(event: dict[str, Any]) -> float:
    """When an event was recorded (time.time() scale)."""
    return datetime.fromisoformat(event["at"]).timestamp()


class KeepAliveLoad(LoadGenerator):
    """`clients` clients, each sending one request at a time on its own kept-alive connection, ~`rate`
    requests per second in all; a hit's end is `at + seconds`."""

    def __init__(self, url: str, clients: int = 4, rate: float = 60.0) -> None:
        super().__init__(url, rate=rate, keepalive=True)
        self.clients = clients

    async def _client(self) -> None:
        pool = Pool(Target.of(self.url), size=1)
        period = self.clients / self.rate
        try:
            while True:
                at = time.time()
                await self._one(pool, at, 0)
                await asyncio.sleep(max(0.0, period - (time.time() - at)))
        finally:
            pool.close()

    async def _run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.clients)))


@contextlib.asynccontextmanager
async def haproxy_stack(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Stack, HaproxyInstance]]:
    haproxy = await asyncio.to_thread(start_haproxy)
    try:
        async with make_stack(tmp_path, sqlite_url) as stack:
            yield stack, haproxy
    finally:
        await asyncio.to_thread(haproxy.cleanup)


async def weights(haproxy: HaproxyInstance, app_id: int) -> dict[str, int]:
    answer = await LocalTransport().unix_request(
        haproxy.socket, f"show servers state canaryd_app_{app_id}\n".encode(), 5.0
    )
    state = parse_servers_state(answer.decode())
    assert state is not None
    return {name: s.weight for name, s in state.items()}


async def test_rollout_through_haproxy_under_keepalive_load(tmp_path: Path, sqlite_url: str) -> None:
    """A healthy canary completes through HAProxy with zero 5xx and zero connection errors for keep-alive
    clients (outside HAProxy's own restart), weights move by the runtime API without any reload, a restart
    mid-canary keeps the split, and weights changed behind canaryd's back are re-asserted."""
    async with haproxy_stack(tmp_path, sqlite_url) as (s, haproxy):
        app = await s.register("v1", proxy_overrides=haproxy.spec().model_dump(exclude={"server_id"}))
        load = KeepAliveLoad(haproxy.url).start()
        await asyncio.sleep(0.5)
        workers_before = haproxy.worker_pids()

        r = await s.deploy("v2", STAGES)
        assert r.status_code == 201, r.text
        dep = r.json()
        await s.wait(dep["id"], until={"monitoring"}, timeout=30)
        assert haproxy.worker_pids() == workers_before, "the canary's first split needed a reload"

        # Wait for the 25 % stage, then restart HAProxy from its files.
        deadline = time.monotonic() + 20
        while (await s.status(dep["id"]))["current_traffic_percentage"] != 25:
            assert time.monotonic() < deadline, "never reached the 25 % stage"
            # Each status read costs the API ~5 ms of CPU; the stage lasts 4 s, the restart needs well under 1 s.
            await asyncio.sleep(0.2)
        before = await weights(haproxy, app["id"])
        restart_started = time.time()
        restarted_at = await asyncio.to_thread(haproxy.restart)
        after_restart = await weights(haproxy, app["id"])
        assert after_restart == before, "the restart lost the split"
        assert sorted(before.values()) == [3, 3, 3, 3, 4]  # 1 canary at 4, 4 stable at 3: 25 %
        await asyncio.sleep(2.0)  # the clients see the split the restarted HAProxy serves
        # Taken after the restart's own re-asserts (at most 1.5 s after it, asserted below), which may reload:
        # from here on, no stage or promotion may.
        workers_after_restart = haproxy.worker_pids()
        assert (await s.status(dep["id"]))["current_traffic_percentage"] == 25
        held = [h for h in load.hits if restarted_at + 0.5 <= h.at and h.status == 200]
        assert len(held) >= 40
        share = 100 * sum(1 for h in held if h.version == "v2") / len(held)
        assert abs(share - 25.0) <= 10.0, share
        # A tick that looked while HAProxy was down (it is stopped, then started) re-asserts, which is right:
        # canaryd cannot tell a restart from a loss. Once HAProxy is back from the same files, no tick may.
        # A tick takes the verification's ~1 s at most here, so its event is recorded by then.
        restart_reasserts = [
            (round(event_time(e) - restarted_at, 2), e["reasons"])
            for e in await s.events(dep["id"])
            if e["kind"] == "proxy_reasserted"
        ]
        assert all(after <= 1.5 for after, _ in restart_reasserts), (
            "a restart from the same files must not need re-asserting once HAProxy is back "
            f"(restart took {restarted_at - restart_started:.2f} s; re-asserts, s after it: {restart_reasserts})"
        )

        # Weights changed behind canaryd's back: the next tick notices and re-asserts them.
        canary_name = next(n for n, w in before.items() if w == 4)
        await LocalTransport().unix_request(
            haproxy.socket, f"set weight canaryd_app_{app['id']}/{canary_name} 0\n".encode(), 5.0
        )
        tampered_at = time.time()
        deadline = time.monotonic() + 10
        while (await weights(haproxy, app["id"]))[canary_name] == 0:
            assert time.monotonic() < deadline, "canaryd did not re-assert the tampered weight"
            await asyncio.sleep(0.05)
        reasserted_at = time.time()

        await s.wait(dep["id"], timeout=90)
        await asyncio.sleep(0.5)
        await load.stop()

        status = await s.status(dep["id"])
        assert status["canary_status"] == "completed", status["reasons"]
        assert await s.fleet_versions() == ["v2"] * 5
        events = await s.events(dep["id"])
        reasserted = [e for e in events if e["kind"] == "proxy_reasserted" and event_time(e) >= tampered_at]
        assert len(reasserted) == 1, reasserted
        assert "no longer served" in reasserted[0]["reasons"][0]
        assert haproxy.worker_pids() == workers_after_restart, "a stage or the promotion reloaded HAProxy"

        # A request is inside the restart when it was under way at any moment of it: one sent just before the
        # stop on a kept-alive connection fails with it (a loaded machine stretches that moment).
        window_end = restarted_at + 1.0
        spans = [(h, h.at + h.seconds) for h in load.hits]
        inside = [h for h, end in spans if end >= restart_started and h.at < window_end]
        outside = [(h, end) for h, end in spans if end < restart_started or h.at >= window_end]
        bad_outside = [(h, round(end - h.at, 3)) for h, end in outside if h.status == 0 or h.status >= 500]
        assert len(outside) > 500
        assert bad_outside == [], (
            f"{len(bad_outside)} failed requests outside the restart ({restart_started:.3f}-{window_end:.3f}): "
            f"{bad_outside[:5]}; errors {load.errors[:5]}"
        )

        live = [e["metrics"]["proxy"]["live_ms"] for e in events if e["kind"] == "stage_advanced"]
        bare = []
        for _ in range(20):
            started = time.perf_counter()
            await LocalTransport().unix_request(
                haproxy.socket, f"get weight canaryd_app_{app['id']}/s{s.server_ids[0]}\n".encode(), 5.0
            )
            bare.append((time.perf_counter() - started) * 1000)
        print(
            f"\nHAProxy e2e: {len(load.hits)} keep-alive requests, {len(bad_outside)} failed outside the restart, "
            f"{sum(1 for h in inside if h.status == 0 or h.status >= 500)} of {len(inside)} failed during the restart "
            f"({window_end - restart_started:.2f} s window); decision->live (apply+verify) per stage {live} ms; "
            f"bare runtime API call median {statistics.median(bare):.2f} ms; tamper re-asserted after "
            f"{reasserted_at - tampered_at:.2f} s; canary share after the restart {share:.1f} %"
        )
        assert all(0 < ms < 1000 for ms in live)
