"""Notifications of a real rollout (real nginx, real sample apps, both modes) reach real loopback receivers:
every subscribed event, in order, signed, although the first delivery was answered 500; and a Slack-format
subscription is accepted by a receiver that checks Slack's incoming-webhook shape."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tests.fixtures.receiver import receiver, valid_signature
from tests.fixtures.stack import LoadGenerator, make_stack

SECRET = "e2e-webhook-secret-0123456789"
SUBSCRIBED = [
    "stage_advanced",
    "paused",
    "waiting_for_approval",
    "rollback_started",
    "rolled_back",
    "completed",
    "failed",
]
FAST = {
    "stages": [50, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "min_requests": 3,
    "judge": "threshold",
    "latency_tail_ms": 1000,
}


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_rollout_events_reach_the_receivers_in_order(
    mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Embedded (SQLite, in-process loop) and production (PostgreSQL, two workers deliver): the json
    receiver gets each subscribed event once acknowledged, in history order, validly signed, with the first
    delivery sent again after its 500 under the same key; the Slack receiver accepts every message."""
    if mode == "embedded":
        database, redis, workers = request.getfixturevalue("sqlite_url"), None, 0
    else:
        database, redis, workers = request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url"), 2
    async with (
        receiver(script=[500]) as hook,
        receiver(slack=True) as slack,
        make_stack(tmp_path, database, redis, workers=workers, servers=2) as s,
    ):
        await s.register("v1")
        r = await s.api.post("/webhooks", json={"url": hook.url, "events": SUBSCRIBED, "secret": SECRET})
        assert r.status_code == 201, r.text
        hook_id = r.json()["id"]
        r = await s.api.post("/webhooks", json={"url": slack.url, "events": ["*"], "format": "slack"})
        assert r.status_code == 201, r.text
        load = LoadGenerator(s.proxy_url, rate=40).start()
        dep = (await s.deploy("v2", FAST)).json()
        await s.wait(dep["id"], timeout=60)
        await load.stop()
        history = await s.events(dep["id"])
        print("outcome:", history[-1]["kind"], history[-1]["reasons"])
        expected = [(e["seq"], e["kind"]) for e in history if e["kind"] in SUBSCRIBED]
        wanted_all = [e for e in history if e["kind"] != "health_check"]
        got = await hook.wait_for(len(expected), timeout=30)
        slack_got = await slack.wait_for(len(wanted_all), timeout=30)
        # The receiver has answered the last delivery; the outbox records that a moment later.
        deadline = time.monotonic() + 10
        while True:
            page = (await s.api.get(f"/webhooks/{hook_id}/deliveries")).json()
            if all(d["status"] == "delivered" for d in page) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    # The outcome does not matter here (a loaded machine may roll back): its notifications do.
    assert history[-1]["kind"] in ("completed", "rolled_back"), history[-1]
    assert [(g.json["event"]["seq"], g.json["event"]["kind"]) for g in got] == expected
    assert expected[0][1] == "stage_advanced" and expected[-1][1] == history[-1]["kind"]
    assert all(valid_signature(SECRET, q.body, q.headers.get("x-canaryd-signature")) for q in hook.requests)
    first, again = hook.requests[0], hook.requests[1]
    assert (first.answered, again.answered, first.key) == (500, 200, again.key)
    assert [q.key for q in hook.requests[1:]] == [g.key for g in got], "nothing overtook the failed first"
    assert all(
        g.json["application"]["name"] == "shop" and g.json["deployment"]["id"] == dep["id"] for g in got
    )
    assert got[-1].json["deployment"]["canary_status"] == history[-1]["to_state"]
    assert all(q.answered == 200 for q in slack.requests), [
        q.body for q in slack.requests if q.answered != 200
    ]
    assert [q.headers["x-canaryd-event"] for q in slack_got] == [e["kind"] for e in wanted_all]
    assert "x-canaryd-signature" not in slack.requests[0].headers
    oldest = page[-1]
    assert (oldest["status"], oldest["attempts"], oldest["last_status_code"]) == ("delivered", 2, 200)
    assert all(d["status"] == "delivered" for d in page) and len(page) == len(expected)
