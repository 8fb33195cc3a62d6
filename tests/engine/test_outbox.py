"""The webhook outbox on both databases (SQLite and PostgreSQL) against a real loopback receiver: deliveries
commit with their events, arrive in order, signed, after failures and past a dead worker's lease."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd.db.engine import unit_of_work
from canaryd.db.models import Deployment, DeploymentEvent, Webhook, WebhookDelivery
from canaryd.db.repositories import EventRepository
from canaryd.db.webhooks import DeliveryRepository
from canaryd.domain.notifications import body
from canaryd.engine.outbox import DeliveryTerms, Outbox, enqueue
from canaryd.engine.ports import SystemClock
from canaryd.observability import Metrics
from tests.fixtures.events import record
from tests.fixtures.receiver import Receiver, receiver, valid_signature

SECRET = "outbox-test-secret-0123456789"
#: Short waits so a test's retries take tenths of a second.
TERMS = DeliveryTerms(
    timeout=2.0, max_attempts=5, backoff=0.05, backoff_max=0.2, poll_interval=0.05, retention_days=30
)
ROLLOUT = ["deployment_created", "stage_advanced", "health_check", "stage_advanced", "promoted", "completed"]
SUBSCRIBED = ["stage_advanced", "completed"]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


async def subscribe(
    sessions: async_sessionmaker[AsyncSession], url: str, events: list[str], fmt: str = "json"
) -> int:
    async with unit_of_work(sessions) as s:
        hook = Webhook(url=url, events=events, secret=SECRET, format=fmt, description="", created_by="test")
        s.add(hook)
        await s.flush()
        return hook.id


@contextlib.asynccontextmanager
async def delivering(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient, count: int = 1, **terms: Any
) -> AsyncIterator[Metrics]:
    """`count` outboxes (as `count` workers would run) delivering until the block ends."""
    metrics = Metrics()
    settings = {name: getattr(TERMS, name) for name in TERMS.__slots__}
    boxes = [
        Outbox(sessions, http, SystemClock(), metrics, DeliveryTerms(**{**settings, **terms}), f"worker{i}")
        for i in range(count)
    ]
    tasks = [asyncio.create_task(b.run_forever()) for b in boxes]
    try:
        yield metrics
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def deliveries(sessions: async_sessionmaker[AsyncSession]) -> list[WebhookDelivery]:
    async with sessions() as s:
        return list((await s.execute(select(WebhookDelivery).order_by(WebhookDelivery.id))).scalars())


async def settled(sessions: async_sessionmaker[AsyncSession], timeout: float = 10) -> list[WebhookDelivery]:
    """The deliveries once none is pending (the receiver may answer a moment before the outcome is stored)."""
    for _ in range(int(timeout / 0.05)):
        rows = await deliveries(sessions)
        if all(d.status != "pending" for d in rows):
            return rows
        await asyncio.sleep(0.05)
    pytest.fail(f"deliveries still pending after {timeout} s")


def kinds_of(r: Receiver) -> list[str]:
    return [d.headers["x-canaryd-event"] for d in r.delivered()]


async def test_every_subscribed_event_arrives_in_order_signed_after_a_500(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient
) -> None:
    """The first delivery answered 500 is sent again with the same key; nothing later overtakes it."""
    async with receiver(script=[500]) as r:
        await subscribe(sessions, r.url, SUBSCRIBED)
        await record(sessions, ROLLOUT)
        async with delivering(sessions, http) as metrics:
            got = await r.wait_for(3, timeout=15)
            rows = await settled(sessions)
    assert [g.headers["x-canaryd-event"] for g in got] == ["stage_advanced", "stage_advanced", "completed"]
    assert [g.json["event"]["seq"] for g in got] == [2, 4, 6]
    first, retry = r.requests[0], r.requests[1]
    assert (first.answered, retry.answered) == (500, 200)
    assert first.key == retry.key == got[0].key and first.body == retry.body
    assert [q.headers["x-canaryd-attempt"] for q in r.requests[:2]] == ["1", "2"]
    assert all(valid_signature(SECRET, q.body, q.headers.get("x-canaryd-signature")) for q in r.requests)
    assert len({g.key for g in got}) == 3
    assert [(d.status, d.attempts) for d in rows] == [("delivered", 2), ("delivered", 1), ("delivered", 1)]
    assert rows[0].last_status_code == 200 and rows[0].last_error is None
    text = metrics.render().decode()
    assert 'canaryd_webhook_deliveries_total{outcome="delivered"} 3.0' in text
    assert 'canaryd_webhook_deliveries_total{outcome="retried"} 1.0' in text


async def test_payload_names_the_event_the_application_and_the_status(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient
) -> None:
    """The json body: event (kind, seq, stage, actor, at), application id and name, compact status."""
    async with receiver() as r:
        await subscribe(sessions, r.url, ["*"])
        dep_id = await record(sessions, ["stage_advanced", "health_check"])
        async with delivering(sessions, http):
            (got,) = await r.wait_for(1, timeout=10)
    data = got.json
    assert data["delivery"] == got.key and data["schema"] == 1
    assert data["event"]["kind"] == "stage_advanced" and data["event"]["actor"] == "canaryd"
    assert data["application"]["name"].startswith("shop-")
    assert data["deployment"]["id"] == dep_id and data["deployment"]["version"] == "v2"
    assert data["deployment"]["canary_status"] == "monitoring"
    assert data["deployment"]["total_stages"] == 2
    assert got.headers["content-type"] == "application/json"
    assert got.body == body("json", data), "the body is the stored payload, rendered canonically"
    assert len(r.requests) == 1, "health checks are not subscribable, not even with '*'"


async def test_two_workers_deliver_each_once_in_order(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient
) -> None:
    """Two outboxes on one queue: every delivery sent once, in event order, across two subscriptions."""
    async with receiver() as a, receiver() as b:
        await subscribe(sessions, a.url, ["*"])
        await subscribe(sessions, b.url, ["stage_advanced"])
        await record(sessions, ["stage_advanced"] * 12)
        async with delivering(sessions, http, count=2):
            await a.wait_for(12, timeout=20)
            await b.wait_for(12, timeout=20)
    for r in (a, b):
        assert [q.json["event"]["seq"] for q in r.requests] == list(range(1, 13))
        assert len({q.key for q in r.requests}) == 12


async def test_a_dead_workers_delivery_is_sent_again_after_its_lease(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient
) -> None:
    """A delivery leased by a worker that died holds its queue until the lease expires, then goes out with
    the same key (and the later ones after it)."""
    async with receiver() as r:
        await subscribe(sessions, r.url, SUBSCRIBED)
        await record(sessions, ["stage_advanced", "completed"])
        now = datetime.now(UTC)
        async with unit_of_work(sessions) as s:
            (dead,) = await DeliveryRepository(s).claim("dead-worker", now, now + timedelta(seconds=1.5), 10)
            dead_key = dead[0].key
        async with delivering(sessions, http):
            await asyncio.sleep(0.8)
            assert r.requests == [], "the dead worker's lease holds the whole queue"
            got = await r.wait_for(2, timeout=10)
    assert got[0].key == dead_key
    assert kinds_of(r) == SUBSCRIBED


async def test_last_attempt_fails_the_delivery_and_the_queue_moves_on(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """After max_attempts refusals a delivery is failed (logged without the secret or the URL's path) and
    the next one is delivered."""
    caplog.set_level(logging.DEBUG, logger="canaryd")
    async with receiver(script=[503, 503]) as r:
        await subscribe(sessions, r.url + "/T0SECRETPATH", SUBSCRIBED)
        await record(sessions, ["stage_advanced", "completed"])
        async with delivering(sessions, http, max_attempts=2) as metrics:
            await r.wait_for(1, timeout=10)
            rows = await settled(sessions)
    assert [(d.status, d.attempts, d.last_status_code) for d in rows] == [
        ("failed", 2, 503),
        ("delivered", 1, 200),
    ]
    assert rows[0].last_error == "HTTP 503: scripted failure"
    assert kinds_of(r) == ["completed"]
    assert 'canaryd_webhook_deliveries_total{outcome="failed"} 1.0' in metrics.render().decode()
    # canaryd's own lines; httpx's (which name the URL) are at WARNING unless CANARYD_LOG_LEVEL=DEBUG, as
    # configure_logging sets and docs/notifications.md says, whatever another test left the level at.
    ours = "\n".join(rec.getMessage() for rec in caplog.records if rec.name.startswith("canaryd"))
    assert "failed after 2 attempts" in ours
    assert SECRET not in ours and "T0SECRETPATH" not in ours


async def test_unreachable_receiver_is_retried_with_backoff(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient
) -> None:
    """A refused connection counts as a failed attempt, with the error kept and the next attempt scheduled."""
    async with receiver() as r:
        url = r.url
    await subscribe(sessions, url, SUBSCRIBED)  # the receiver is gone: connections are refused
    await record(sessions, ["completed"])
    async with delivering(sessions, http, backoff=30, backoff_max=60):
        for _ in range(100):
            (row,) = await deliveries(sessions)
            if row.attempts:
                break
            await asyncio.sleep(0.05)
    assert row.status == "pending" and row.attempts == 1 and row.last_status_code is None
    assert row.last_error is not None and "Connect" in row.last_error
    assert row.next_attempt_at - datetime.now(UTC) > timedelta(seconds=25)


async def test_deliveries_commit_with_their_event_or_not_at_all(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A transaction that records an event and then fails leaves neither the event nor its delivery."""
    await subscribe(sessions, "http://127.0.0.1:9/hook", ["*"])
    dep_id = await record(sessions, ["stage_advanced"])
    with pytest.raises(RuntimeError):
        async with unit_of_work(sessions) as s:
            dep = await s.get(Deployment, dep_id)
            assert dep is not None
            row = await EventRepository(s).append(DeploymentEvent(deployment_id=dep_id, kind="completed"))
            assert await enqueue(s, dep, [row]) == 1
            raise RuntimeError("crash before commit")
    async with sessions() as s:
        events = (await s.execute(select(func.count()).select_from(DeploymentEvent))).scalar_one()
    assert events == 1
    assert [d.event_kind for d in await deliveries(sessions)] == ["stage_advanced"]


async def test_slack_body_is_an_incoming_webhook_message(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient
) -> None:
    """A slack subscription gets `text` and blocks that a receiver checking Slack's shape accepts."""
    async with receiver(slack=True) as r:
        await subscribe(sessions, r.url, ["rollback_started", "rolled_back"], fmt="slack")
        await record(sessions, ["stage_advanced", "rollback_started", "rolled_back"])
        async with delivering(sessions, http):
            got = await r.wait_for(2, timeout=10)
    assert all(q.answered == 200 for q in r.requests), [q.body for q in r.requests]
    message = json.loads(got[1].body)
    assert "rolled back" in message["text"] and "v1 runs on every server" in message["text"]
    assert message["blocks"][0]["type"] == "section"


async def test_events_of_one_commit_keep_their_order(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Many events written in one transaction (as a tick's commit writes several) get delivery ids in event
    order for each subscription: the order the outbox sends them in."""
    await subscribe(sessions, "http://127.0.0.1:9/a", ["*"])
    await subscribe(sessions, "http://127.0.0.1:9/b", ["stage_advanced", "completed"])
    dep_id = await record(sessions, ["deployment_created"])
    async with unit_of_work(sessions) as s:
        dep = await s.get(Deployment, dep_id)
        assert dep is not None
        repo = EventRepository(s)
        rows = [
            await repo.append(DeploymentEvent(deployment_id=dep_id, kind="stage_advanced", stage=i))
            for i in range(40)
        ]
        rows.append(await repo.append(DeploymentEvent(deployment_id=dep_id, kind="completed")))
        assert await enqueue(s, dep, rows) == 82
    by_hook: dict[int, list[int]] = {}
    for d in await deliveries(sessions):
        by_hook.setdefault(d.webhook_id, []).append(d.event_seq)
    assert by_hook[1] == list(range(1, 43)) and by_hook[2] == list(range(2, 43))
