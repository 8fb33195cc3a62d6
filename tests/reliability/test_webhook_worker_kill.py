"""Notifications survive a worker SIGKILLed between the events and their delivery (production mode: real
`canaryd serve` and `canaryd worker` processes, PostgreSQL, Redis, nginx, sample apps).

The receiver holds every request, so the whole rollout's notifications sit in the outbox, the oldest one in
flight, when the worker is killed. Another worker then delivers all of them, in order, the interrupted one
again under the same idempotency key. `CANARYD_WEBHOOK_TIMEOUT=1` (lease 6 s) and a 0.2-1 s backoff keep
the test short; the mechanism is the one the defaults use."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tests.fixtures.receiver import receiver, valid_signature

from .cluster import FAST, cluster, wait_terminal

SECRET = "reliability-webhook-secret-0123"
ENV = {"CANARYD_WEBHOOK_TIMEOUT": "1", "CANARYD_WEBHOOK_BACKOFF": "0.2", "CANARYD_WEBHOOK_BACKOFF_MAX": "1"}


async def test_worker_killed_mid_delivery_loses_no_notification(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    """A rollback's every event (but health checks) reaches the receiver, in history order, validly signed,
    after the only worker was SIGKILLed while its first delivery was in flight."""
    async with receiver() as hook, cluster(tmp_path, pg_url, redis_url, **ENV) as c:
        hook.release.clear()  # hold every request until released
        await c.start_api()
        c.start_worker("worker0")
        async with c.client() as api:
            app = await c.add_app(api, "notify")
            r = await api.post("/webhooks", json={"url": hook.url, "events": ["*"], "secret": SECRET})
            assert r.status_code == 201, r.text
            hook_id = r.json()["id"]
            r = await api.post(
                f"/applications/{app.id}/deployments",
                json={"version": "v2-dead", "strategy": "canary", "config": FAST},  # health fails: rollback
            )
            assert r.status_code == 201, r.text
            dep_id = r.json()["id"]
            final = await wait_terminal(api, [dep_id], timeout=60)
            assert final[dep_id]["canary_status"] == "rolled_back"
            deadline = time.monotonic() + 10
            while hook.held < 1:  # the worker is in the middle of a delivery
                assert time.monotonic() < deadline, "no delivery was attempted"
                await asyncio.sleep(0.02)
            c.kill("worker0")
            killed_at = time.monotonic()
            in_flight = hook.requests[-1].key
            assert hook.delivered() == [], "nothing was acknowledged before the kill"
            hook.release.set()
            c.start_worker("worker1")
            history = [e for e in (await api.get(f"/deployments/{dep_id}/events")).json()]
            expected = [(e["seq"], e["kind"]) for e in history if e["kind"] != "health_check"]
            got = await hook.wait_for(len(expected), timeout=40)
            print(
                f"\n{len(expected)} deliveries acknowledged {time.monotonic() - killed_at:.1f} s after the kill"
            )
            page = (await api.get(f"/webhooks/{hook_id}/deliveries", params={"limit": 200})).json()
    assert [(g.json["event"]["seq"], g.json["event"]["kind"]) for g in got] == expected
    assert {"deployment_created", "rollback_started", "rolled_back"} <= {k for _, k in expected}
    assert got[0].key == in_flight, "the interrupted delivery went out again under its key"
    assert all(valid_signature(SECRET, q.body, q.headers.get("x-canaryd-signature")) for q in hook.requests)
    assert sorted(d["status"] for d in page) == ["delivered"] * len(expected)
    if len({q.key for q in hook.requests}) != len(expected):
        pytest.fail("a request carried a key that is no delivery")
