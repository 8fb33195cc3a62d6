"""Strategy `ab` end to end on each real proxy (nginx, HAProxy, Traefik), driven through canaryd's API
(embedded mode) in front of five real app instances, observed from the client side.

One application per proxy gets three A/B tests in a row: a good version completes, a bad one (30 % errors)
is rolled back by the judge, and a third is rolled back by an operator in the middle of its test. A client
sends, on a fresh connection each, requests that match a rule (header `X-Beta: 1`, cookie `plan=pro` among
other cookies, a `User-Agent` containing `Mobile`) and requests that nearly do (`X-Beta: 2`, `plan=free`,
`xplan=pro`, none); which version answered each one is counted per phase of the deployment."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.stack import LoadGenerator, Stack, make_stack
from tests.fixtures.traefik import start_traefik

from .test_haproxy_e2e import haproxy_stack

pytestmark = pytest.mark.e2e

AB = {
    "match": [
        {"header": "X-Beta", "equals": "1"},
        {"cookie": "plan", "equals": "pro"},
        {"header": "User-Agent", "regex": "Mobile"},
    ]
}
#: Four-second tests, judged every second by the threshold judge (10 requests a cohort are enough for it;
#: the sequential judge needs ~250 canary requests to pass, which would double each test's length: both
#: judges run A/B tests in tests/engine/test_ab.py). Only requests over 1 s count as slow.
TEST = {
    "ab": AB,
    "judge": "threshold",
    "stage_duration": 4,
    "inconclusive_timeout": 30,
    "health_check_interval": 1,
    "min_requests": 10,
    "latency_tail_ms": 1000,
    # Routing is tested here, not latency verdicts: the threshold judge's p95 rule (+50 % and 25 ms) once
    # rolled a healthy version back within 1.5 s on a loaded machine, before the operator's rollback.
    "latency_min_difference_ms": 5000,
}
#: (name, headers, matches a rule)
KINDS: tuple[tuple[str, dict[str, str], bool], ...] = (
    ("header X-Beta: 1", {"X-Beta": "1"}, True),
    ("cookie plan=pro", {"Cookie": "session=abc; plan=pro; theme=dark"}, True),
    ("User-Agent ~ Mobile", {"User-Agent": "Mozilla/5.0 (iPhone) Mobile/15E148 Safari/604.1"}, True),
    ("header X-Beta: 2", {"X-Beta": "2"}, False),
    ("cookie plan=free", {"Cookie": "plan=free"}, False),
    ("cookie xplan=pro", {"Cookie": "xplan=pro; planx=pro"}, False),
    ("nothing", {}, False),
)


class ABClient(LoadGenerator):
    """Cycles through KINDS at about 70 requests per second, each on a new connection."""

    def __init__(self, url: str) -> None:
        super().__init__(url, rate=70.0, kinds=tuple(headers for _, headers, _ in KINDS))

    def counts(self, t0: float, t1: float, new: str) -> dict[str, tuple[int, int]]:
        """Per kind in [t0, t1): (requests answered, of which by `new`, the canary's version)."""
        out: dict[str, tuple[int, int]] = {}
        for name, _, _ in KINDS:
            out[name] = (0, 0)
        for h in self.window(t0, t1):
            if h.status:
                n, c = out[KINDS[h.kind][0]]
                out[KINDS[h.kind][0]] = (n + 1, c + (h.version == new))
        return out


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _matching(counts: dict[str, tuple[int, int]]) -> tuple[int, int, int, int]:
    """(matching requests, of which canary, other requests, of which canary)."""
    match = {name for name, _, m in KINDS if m}
    m = [v for k, v in counts.items() if k in match]
    o = [v for k, v in counts.items() if k not in match]
    return sum(n for n, _ in m), sum(c for _, c in m), sum(n for n, _ in o), sum(c for _, c in o)


async def _event_at(s: Stack, dep_id: int, kind: str) -> float:
    events = await s.events(dep_id)
    return _epoch(next(e["at"] for e in events if e["kind"] == kind))


async def _wait_until(s: Stack, dep_id: int, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (await s.status(dep_id))["canary_status"] != state:
        assert time.monotonic() < deadline, (await s.status(dep_id))["reasons"]
        # Each status read costs the API ~5 ms of CPU; the test waits 1.5 s after this anyway.
        await asyncio.sleep(0.2)


async def three_ab_tests(s: Stack, url: str, proxy: str) -> dict[str, Any]:
    """Good → completed, bad → rolled back by the judge, third → rolled back by an operator mid-test; the
    client's figures per phase are asserted and returned."""
    client = ABClient(url).start()
    figures: dict[str, Any] = {}
    try:
        await asyncio.sleep(0.5)
        # 1. A good version completes.
        r = await s.deploy("v2", TEST, strategy="ab")
        assert r.status_code == 201, r.text
        dep = r.json()
        started = time.time()
        await s.wait(dep["id"], timeout=45)
        status = await s.status(dep["id"])
        assert status["canary_status"] == "completed", status["reasons"]
        assert await s.fleet_versions() == ["v2"] * 5
        test_from = await _event_at(s, dep["id"], "stage_advanced")
        test_to = await _event_at(s, dep["id"], "promoted")
        completed = await _event_at(s, dep["id"], "completed")
        await asyncio.sleep(0.5)
        # Before the test: the canary is drained, so nobody may get v2 (2 s for the switch to go live).
        before = _matching(client.counts(started, test_from - 2.0, "v2"))
        during = _matching(client.counts(test_from, test_to, "v2"))
        after = _matching(client.counts(completed, time.time(), "v2"))
        assert before[1] == 0 and before[3] == 0, before
        assert during[0] >= 30 and during[1] == during[0], f"a matching request reached stable: {during}"
        assert during[2] >= 30 and during[3] == 0, f"a request without a match reached the canary: {during}"
        assert after[0] and after[1] == after[0] and after[3] == after[2], after
        per_kind = client.counts(test_from, test_to, "v2")
        assert all(per_kind[name][0] > 0 for name, _, _ in KINDS), per_kind
        events = await s.events(dep["id"])
        judged = next(e["metrics"] for e in events if e["kind"] == "promoted")
        assert judged["canary"]["requests"] > 0 and judged["stable"]["requests"] > 0, judged
        figures["good"] = {
            "before": before,
            "test": during,
            "after": after,
            "per_kind": per_kind,
            "judge": (judged["canary"]["requests"], judged["stable"]["requests"]),
        }

        # 2. A bad version (30 % errors) is rolled back by the judge, with the reason.
        # The judge waits for 100 requests a cohort (about 3.5 s): a window long enough to count in.
        r = await s.deploy("v3-bad", {**TEST, "stage_duration": 30, "min_requests": 100}, strategy="ab")
        assert r.status_code == 201, r.text
        dep = r.json()
        await s.wait(dep["id"], timeout=45)
        status = await s.status(dep["id"])
        assert status["canary_status"] == "rolled_back", status["reasons"]
        assert any(reason.startswith("error_rate:") for reason in status["reasons"]), status["reasons"]
        assert await s.fleet_versions() == ["v2"] * 5
        test_from = await _event_at(s, dep["id"], "stage_advanced")
        cut = await _event_at(s, dep["id"], "rollback_started")
        # The cut goes live in the tick that decides it, before its event is written: 2 s of margin.
        during = _matching(client.counts(test_from, cut - 2.0, "v3-bad"))
        assert during[0] >= 20 and during[1] == during[0] and during[3] == 0, during
        done = await _event_at(s, dep["id"], "rolled_back")
        whole = _matching(client.counts(_epoch(dep["created_at"]), done, "v3-bad"))
        assert whole[1] >= during[1] and whole[3] == 0, (
            f"a request without a match reached the canary: {whole}"
        )
        await asyncio.sleep(0.5)
        after = _matching(client.counts(done, time.time(), "v3-bad"))
        assert after[0] and after[1] == 0 and after[3] == 0, after
        figures["bad"] = {
            "test": during,
            "whole": whole,
            "after": after,
            "reason": status["reasons"][0][:120],
        }

        # 3. An operator rolls back in the middle of a test.
        r = await s.deploy("v4", {**TEST, "stage_duration": 120}, strategy="ab")
        assert r.status_code == 201, r.text
        dep = r.json()
        await _wait_until(s, dep["id"], "monitoring")
        await asyncio.sleep(1.5)
        r = await s.api.post(f"/deployments/{dep['id']}/rollback", json={"reason": "A/B test stopped"})
        assert r.status_code == 202, r.text
        await s.wait(dep["id"], timeout=60)
        status = await s.status(dep["id"])
        assert status["canary_status"] == "rolled_back", status["reasons"]
        assert any("A/B test stopped" in reason for reason in status["reasons"]), status["reasons"]
        test_from = await _event_at(s, dep["id"], "stage_advanced")
        cut = await _event_at(s, dep["id"], "rollback_started")
        # An operator's rollback is written first; the tick it schedules cuts the canary's traffic after.
        during = _matching(client.counts(test_from, cut, "v4"))
        assert during[0] > 0 and during[1] == during[0] and during[3] == 0, during
        done = await _event_at(s, dep["id"], "rolled_back")
        await asyncio.sleep(0.5)
        after = _matching(client.counts(done, time.time(), "v4"))
        assert after[0] and after[1] == 0 and after[3] == 0, after
        assert await s.fleet_versions() == ["v2"] * 5
        figures["operator"] = {"test": during, "after": after}
    finally:
        await client.stop()
    failed = [h for h in client.hits if h.status == 0]
    assert not failed, f"{len(failed)} connection failures"
    print(f"\nA/B on {proxy}: (matching, of which canary, others, of which canary) {figures}")
    return figures


async def test_ab_through_nginx(embedded_stack: Stack) -> None:
    """nginx: every matching request and no other reaches the canary during the test; good completes, bad
    and operator-stopped tests roll back."""
    await embedded_stack.register("v1")
    await three_ab_tests(embedded_stack, embedded_stack.proxy_url, "nginx")


async def test_ab_through_haproxy(tmp_path: Path, sqlite_url: str) -> None:
    """HAProxy: the same, with the rules as acls in canaryd's frontend and the canary at weight 0 in the split."""
    async with haproxy_stack(tmp_path, sqlite_url) as (s, haproxy):
        await s.register("v1", proxy_overrides=haproxy.spec().model_dump(exclude={"server_id"}))
        await three_ab_tests(s, haproxy.url, "haproxy")


@contextlib.asynccontextmanager
async def _traefik(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Stack, str, dict[str, Any]]]:
    async with make_stack(tmp_path, sqlite_url) as s:
        traefik = await asyncio.to_thread(start_traefik)
        try:
            overrides = traefik.spec().model_dump()
            overrides.update(listen=None, access_log=None, test_command=None)
            yield s, traefik.url, overrides
        finally:
            await asyncio.to_thread(traefik.cleanup)


async def test_ab_through_traefik(tmp_path: Path, sqlite_url: str) -> None:
    """Traefik (file provider): the same, with one router per rule (Header, HeaderRegexp; the cookie by a
    regex over the Cookie header) above the application's router."""
    async with _traefik(tmp_path, sqlite_url) as (s, url, overrides):
        await s.register("v1", proxy_overrides=overrides)
        await three_ab_tests(s, url, "traefik")
