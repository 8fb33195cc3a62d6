"""Strategy `mirror` end to end on real nginx, driven through canaryd's API (embedded mode) in front of five
real app instances, observed from the client side and from the canary's own request counter.

One application gets five mirror tests in a row: a good version passes its mirror phase and completes as a
canary (`then: canary`); a bad one (30 % errors to the copies) is rolled back by the judge; a third is rolled
back by an operator during its mirror phase, a fourth during the canary stage after it; a slow one (300 ms)
passes its `then: stop` test and ends without promoting, while a keep-alive client measures what a slow
mirror costs it. A client sends requests on
fresh connections; which version answered each one is counted per phase."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.http import Pool, ServedCounter, Target
from tests.fixtures.stack import LoadGenerator, Stack, make_stack
from tests.fixtures.traefik import start_traefik

pytestmark = pytest.mark.e2e

PERCENT = 30
#: Two-second phases judged every second by the threshold judge (10 requests a side are enough for it);
#: only requests over 1 s count as slow, and latency differences under 5 s are never judged worse.
TEST: dict[str, Any] = {
    "mirror": {"percent": PERCENT},
    "stages": [100],
    "judge": "threshold",
    "stage_duration": 2,
    "inconclusive_timeout": 30,
    "health_check_interval": 1,
    "min_requests": 10,
    "latency_tail_ms": 1000,
    "latency_min_difference_ms": 5000,
}


class Client(LoadGenerator):
    """About 60 requests per second, each on a new connection."""

    def __init__(self, url: str, rate: float = 60.0) -> None:
        super().__init__(url, rate=rate)

    def answered(self, t0: float, t1: float, version: str) -> tuple[int, int]:
        """Requests sent in [t0, t1) and answered: (all, answered by `version`)."""
        window = [h for h in self.window(t0, t1) if h.status]
        return len(window), sum(h.version == version for h in window)


class KeepAliveClient(Client):
    """One request at a time on one kept-alive connection: the slow mirror test measures what nginx's
    waiting for a copy's answer before reading the connection's next request costs such a client."""

    async def _run(self) -> None:
        pool = Pool(Target.of(self.url), size=1)
        try:
            while True:
                started = time.time()
                await self._one(pool, started, 0)
                await asyncio.sleep(max(0.0, 1 / self.rate - (time.time() - started)))
        finally:
            pool.close()


def _canary_hosts(s: Stack, dep_id: int) -> Callable[[], Awaitable[list[str]]]:
    """The canary servers' hosts: chosen once, when the deployment starts, so a counter asks until it has them
    (a status read costs the API ~5-20 ms of CPU: not ten times a second all along)."""

    async def hosts() -> list[str]:
        return [srv["host"] for srv in (await s.status(dep_id))["canary_servers"]]

    return hosts


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def _events_at(s: Stack, dep_id: int, kind: str) -> list[float]:
    return [_epoch(e["at"]) for e in await s.events(dep_id) if e["kind"] == kind]


async def _wait_until(s: Stack, dep_id: int, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (await s.status(dep_id))["canary_status"] != state:
        assert time.monotonic() < deadline, (await s.status(dep_id))["reasons"]
        # Each status read costs the API ~5 ms of CPU; what follows waits a second or more anyway.
        await asyncio.sleep(0.2)


async def _deploy(s: Stack, version: str, config: dict[str, Any]) -> int:
    r = await s.deploy(version, config, strategy="mirror")
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def _good_completes(s: Stack, client: Client) -> dict[str, Any]:
    """Mirror phase: no client gets v2, the canary gets ~PERCENT % copies; then the canary stage and promotion."""
    dep_id = await _deploy(s, "v2", TEST)
    counter = ServedCounter(_canary_hosts(s, dep_id), s.app_port).start()
    try:
        await s.wait(dep_id, timeout=45)
    finally:
        await counter.stop()
    status = await s.status(dep_id)
    assert status["canary_status"] == "completed", status["reasons"]
    assert await s.fleet_versions() == ["v2"] * 5
    mirror_from, canary_from = await _events_at(s, dep_id, "stage_advanced")
    # The canary stage's split goes live in the tick that decides it, before its event: 1 s of margin.
    during = client.answered(mirror_from, canary_from - 1.0, "v2")
    assert during[0] >= 40 and during[1] == 0, f"a client got the canary's answer: {during}"
    # Copies the canary counted itself, against the requests clients sent in the same window (its first
    # 0.3 s left out: the mirror went live before its event was written).
    t0, t1 = mirror_from + 0.3, canary_from - 1.0
    copies = counter.served_before(t1, "v2") - counter.served_before(t0, "v2")
    sent = client.answered(t0, t1, "v2")[0]
    share = copies / sent
    assert 0.12 < share < 0.5, f"{copies} copies of {sent} requests"  # 3 standard deviations at 60 requests
    canary_stage = client.answered(canary_from + 1.0, (await _events_at(s, dep_id, "promoted"))[0], "v2")
    assert canary_stage[1] > 0, canary_stage
    events = await s.events(dep_id)
    judged = next(e for e in events if e["kind"] == "stage_advanced" and e["stage"] == 2)["metrics"]
    note = next(e for e in events if e["kind"] == "stage_advanced")["reasons"][-1]
    assert note == f"mirror: {PERCENT} % of requests copied to the canary; clients get stable", note
    return {
        "mirror_phase_clients": during,
        "canary_copies_of": (copies, sent),
        "copied_share": round(share, 3),
        "judge_canary_stable": (judged["canary"]["requests"], judged["stable"]["requests"]),
        "canary_stage_clients": canary_stage,
    }


async def _bad_rolls_back(s: Stack, client: Client) -> dict[str, Any]:
    """Copies answered with 30 % errors: rolled back by the judge, with the reason; no client saw it."""
    dep_id = await _deploy(s, "v3-bad", {**TEST, "stage_duration": 30, "min_requests": 20})
    await s.wait(dep_id, timeout=45)
    status = await s.status(dep_id)
    assert status["canary_status"] == "rolled_back", status["reasons"]
    assert any(reason.startswith("error_rate:") for reason in status["reasons"]), status["reasons"]
    assert await s.fleet_versions() == ["v2"] * 5
    dep = await s.status(dep_id)
    whole = client.answered(_epoch(dep["created_at"]), time.time(), "v3-bad")
    assert whole[0] > 0 and whole[1] == 0, f"a client got the bad canary's answer: {whole}"
    return {"clients": whole, "reason": status["reasons"][0][:100]}


async def _operator_rolls_back(s: Stack, client: Client) -> dict[str, Any]:
    dep_id = await _deploy(s, "v4", {**TEST, "stage_duration": 120})
    await _wait_until(s, dep_id, "monitoring")
    await asyncio.sleep(1.0)
    r = await s.api.post(f"/deployments/{dep_id}/rollback", json={"reason": "mirror test stopped"})
    assert r.status_code == 202, r.text
    await s.wait(dep_id, timeout=60)
    status = await s.status(dep_id)
    assert status["canary_status"] == "rolled_back", status["reasons"]
    assert any("mirror test stopped" in reason for reason in status["reasons"]), status["reasons"]
    assert await s.fleet_versions() == ["v2"] * 5
    whole = client.answered(_epoch(status["created_at"]), time.time(), "v4")
    assert whole[0] > 0 and whole[1] == 0, whole
    return {"clients": whole}


async def _operator_rolls_back_in_canary_stage(s: Stack, client: Client) -> dict[str, Any]:
    """Past the mirror phase (an operator's promote to the next stage), the canary takes live requests; an
    operator's rollback cuts them (no client gets the canary once the cut is live) and restores the fleet."""
    dep_id = await _deploy(s, "v6", {**TEST, "stages": [50, 100], "stage_duration": 120})
    await _wait_until(s, dep_id, "monitoring")
    r = await s.api.post(f"/deployments/{dep_id}/promote", json={"to": "next"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 20
    while len(await _events_at(s, dep_id, "stage_advanced")) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)  # the times asserted on are the events', not when this loop saw them
    await asyncio.sleep(2.5)  # the stage's split is live (Traefik's provider throttle: 2 s), then some
    r = await s.api.post(f"/deployments/{dep_id}/rollback", json={"reason": "canary stage stopped"})
    assert r.status_code == 202, r.text
    await s.wait(dep_id, timeout=60)
    status = await s.status(dep_id)
    assert status["canary_status"] == "rolled_back", status["reasons"]
    assert any("canary stage stopped" in reason for reason in status["reasons"]), status["reasons"]
    assert await s.fleet_versions() == ["v2"] * 5
    staged, back = (
        (await _events_at(s, dep_id, "stage_advanced"))[1],
        (await _events_at(s, dep_id, "rollback_started"))[0],
    )
    await asyncio.sleep(max(0.0, back + 3.5 - time.time()))
    # The operator's rollback is recorded before the tick that cuts the canary: 2.5 s for the cut to be live.
    live = client.answered(staged + 2.0, back, "v6")
    after = client.answered(back + 2.5, time.time(), "v6")
    assert live[1] > 0 and after[0] > 0 and after[1] == 0, (live, after)
    return {"canary_stage_clients": live, "after_rollback": after}


async def _slow_stops(s: Stack, client: Client) -> dict[str, Any]:
    """A slow version (300 ms) mirrored at 100 % with then: stop: it ends without promoting, no client got
    its answers; a keep-alive client's requests wait for the copy of the one before (nginx reads a
    connection's next request only once the previous request's mirror answered), a fresh-connection
    client's do not."""
    config = {**{k: v for k, v in TEST.items() if k != "stages"}, "mirror": {"percent": 100, "then": "stop"}}
    dep_id = await _deploy(s, "v5-slow", config)
    await _wait_until(s, dep_id, "monitoring")
    keepalive = KeepAliveClient(client.url, rate=10).start()
    await s.wait(dep_id, timeout=45)
    await keepalive.stop()
    status = await s.status(dep_id)
    assert status["canary_status"] == "rolled_back", status["reasons"]
    assert "the mirror test passed and mirror.then is stop" in " ".join(status["reasons"]), status["reasons"]
    assert await s.fleet_versions() == ["v2"] * 5
    whole = client.answered(_epoch(status["created_at"]), time.time(), "v5-slow")
    assert whole[0] > 0 and whole[1] == 0, whole
    test_from = (await _events_at(s, dep_id, "stage_advanced"))[0]
    cut = (await _events_at(s, dep_id, "rollback_started"))[0]
    fresh = [h.seconds for h in client.hits if test_from + 0.5 <= h.at < cut - 1.0 and h.status]
    kept = [h.seconds for h in keepalive.hits if test_from + 0.5 <= h.at < cut - 1.0 and h.status]
    assert all(h.version == "v2" for h in keepalive.hits if h.status), "a keep-alive client got the canary"
    assert fresh and kept and statistics.median(fresh) < 0.2, (fresh, kept)
    return {
        "clients": whole,
        "fresh_median_ms": round(statistics.median(fresh) * 1000),
        "keepalive_median_ms": round(statistics.median(kept) * 1000),
    }


async def four_mirror_tests(s: Stack, url: str, proxy: str) -> dict[str, Any]:
    """Good → completed, bad → rolled back by the judge, operator rollback in the mirror phase and in the
    canary stage after it, slow with then: stop → rolled back without promoting; every failed client request
    fails the test."""
    client = Client(url).start()
    figures: dict[str, Any] = {}
    try:
        await asyncio.sleep(0.5)
        figures["good"] = await _good_completes(s, client)
        figures["bad"] = await _bad_rolls_back(s, client)
        figures["operator"] = await _operator_rolls_back(s, client)
        figures["operator_canary_stage"] = await _operator_rolls_back_in_canary_stage(s, client)
        figures["slow_stop"] = await _slow_stops(s, client)
    finally:
        await client.stop()
    failed = [h for h in client.hits if h.status != 200]
    assert not failed, f"{len(failed)} failed requests"
    print(f"\nmirror on {proxy}: {figures}")
    return figures


async def test_mirror_through_nginx(embedded_stack: Stack) -> None:
    """nginx: clients never get a canary's answer while it is mirrored, the canary gets about the configured
    share of copies, and good, bad, operator-stopped and then: stop tests end as they should."""
    await embedded_stack.register("v1")
    await four_mirror_tests(embedded_stack, embedded_stack.proxy_url, "nginx")


async def test_mirror_through_traefik(tmp_path: Path, sqlite_url: str) -> None:
    """Traefik (file provider): the same through a mirroring service, the canary's answers to the copies
    read from its server service's metrics."""
    async with make_stack(tmp_path, sqlite_url) as s:
        traefik = await asyncio.to_thread(start_traefik)
        try:
            overrides = traefik.spec().model_dump()
            overrides.update(listen=None, access_log=None, test_command=None)
            await s.register("v1", proxy_overrides=overrides)
            await four_mirror_tests(s, traefik.url, "traefik")
        finally:
            await asyncio.to_thread(traefik.cleanup)
