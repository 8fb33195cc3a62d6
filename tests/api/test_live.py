"""The WebSocket's ordering, resumption and closing, and bounded input (413, close 1009), on real parts."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from tests.fixtures.stack import TOKEN, LoadGenerator, Stack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from canaryd.db.engine import unit_of_work
from canaryd.db.models import utcnow
from canaryd.db.repositories import EventRepository
from canaryd.domain.plan import Event, EventKind
from canaryd.engine.store import event_row
from canaryd.engine.views import event_view
from canaryd.runtime import open_runtime
from canaryd.services import live

#: The threshold judge with a small sample decides within each 2 s stage at 60 requests/s.
FAST = {
    "stages": [10, 50, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "judge": "threshold",
    "latency_min_difference_ms": 5000,  # latency is noise on a machine the suite loads; not tested here
    "min_requests": 5,
}
STILL = {"stages": [10, 50, 100], "stage_duration": 600, "health_check_interval": 5}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ws_url(s: Stack, dep_id: int, query: str = "") -> str:
    return s.base.replace("http://", "ws://") + f"/api/v1/deployments/{dep_id}/ws{query}"


async def read_until_closed(ws: ClientConnection, limit: int | None = None) -> list[dict[str, Any]]:
    """Every message until the server closes (or `limit` events were read)."""
    out: list[dict[str, Any]] = []
    try:
        while limit is None or sum(m["type"] == "event" for m in out) < limit:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    except ConnectionClosed:
        pass
    return out


async def monitoring_deployment(s: Stack) -> int:
    """A deployment of v2 over v1 that stays at its first stage (STILL); its id once it monitors."""
    await s.register("v1")
    r = await s.deploy("v2", STILL)
    assert r.status_code == 201, r.text
    dep_id: int = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)
    return dep_id


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages if m["type"] == "event"]


async def test_stream_is_ordered_resumable_and_closes_when_finished(any_stack: Stack) -> None:
    """Live clients get every event once, in seq order; a client that drops and reconnects with after_seq
    misses nothing and repeats nothing; the stream ends with a final status and close 1000; a client of a
    finished deployment gets the backlog, the final status and the close at once."""
    s = any_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    try:
        r = await s.deploy("v2", FAST)
        assert r.status_code == 201, r.text
        dep_id = r.json()["id"]
        async with connect(ws_url(s, dep_id, "?after_seq=0"), additional_headers=AUTH) as whole:
            # The client offers permessage-deflate; the server declines (api/app.py SERVER_OPTIONS).
            assert whole.response is not None and "Sec-WebSocket-Extensions" not in whole.response.headers
            # A second client reads three events, drops, and comes back with the last seq it saw.
            async with connect(ws_url(s, dep_id, "?after_seq=0"), additional_headers=AUTH) as first_half:
                part1 = await read_until_closed(first_half, limit=3)
            await asyncio.sleep(random.uniform(0.5, 2.0))
            resume_at = seqs(part1)[-1]
            async with connect(
                ws_url(s, dep_id, f"?after_seq={resume_at}"), additional_headers=AUTH
            ) as again:
                part2 = await read_until_closed(again)
                assert again.close_code == 1000, again.close_reason
            everything = await read_until_closed(whole)
            assert whole.close_code == 1000 and whole.close_reason == "the deployment has finished"
    finally:
        await load.stop()
    history = [e["seq"] for e in await s.events(dep_id)]
    assert history == list(range(1, len(history) + 1))
    assert seqs(everything) == history, (
        [(m["seq"], m["kind"], m.get("to_state")) for m in everything if m["type"] == "event"],
        [(e["seq"], e["kind"]) for e in await s.events(dep_id)],
    )
    assert seqs(part1) + seqs(part2) == history
    end = await s.status(
        dep_id
    )  # the judge decides on real traffic: completed, or rolled back on a loaded box
    assert end["canary_status"] in ("completed", "rolled_back")
    for messages in (everything, part2):
        assert messages[0]["type"] == "status"
        assert messages[-1]["type"] == "status" and messages[-1]["final"] is True
        assert {k: v for k, v in messages[-1].items() if k not in ("type", "final")} == end
        assert not any(m.get("final") for m in messages[:-1])

    # Finished already: status, backlog after 2, final status, close.
    async with connect(ws_url(s, dep_id, "?after_seq=2"), additional_headers=AUTH) as late:
        after = await read_until_closed(late)
        assert late.close_code == 1000
    assert seqs(after) == history[2:]
    assert after[-1]["final"] is True and after[-1]["canary_status"] == end["canary_status"]


async def test_gaps_are_filled_and_duplicates_dropped(embedded_stack: Stack) -> None:
    """Events that reach the bus shuffled, twice, or not at all still come out once each, in order: a gap is
    filled from the database, a lost tail is found by the idle poll, the end closes the stream."""
    s = embedded_stack
    dep_id = await monitoring_deployment(s)
    r = await s.api.post(f"/deployments/{dep_id}/pause")
    assert r.status_code == 202, r.text
    start = len(await s.events(dep_id))

    # A second runtime on the same database: its in-process bus is one this test publishes to at will.
    async with open_runtime(s.settings, "api") as rt:
        stream = live.follow(rt, dep_id, after_seq=None, idle_poll=0.5)
        first = await anext(stream)
        assert first["type"] == "status" and first["canary_status"] == "paused"
        rows = []
        async with unit_of_work(rt.sessions) as session:
            for i in range(6):
                row = await EventRepository(session).append(
                    event_row(dep_id, Event(EventKind.HEALTH_CHECK, (f"synthetic {i}",)), utcnow(), None)
                )
                rows.append({"type": "event", **event_view(row)})  # as every writer publishes them
        # Published: the 3rd first (a gap of two), then the 1st and 2nd (duplicates by then), the 4th twice;
        # the 5th and 6th never (lost by the bus).
        # Another deployment's messages (a misrouted publish) neither end nor disturb the stream.
        foreign = {"type": "event", "deployment_id": dep_id + 1000, "seq": 999, "to_state": "completed"}
        await rt.bus.publish(dep_id, foreign)
        await rt.bus.publish(dep_id, {"type": "status", "id": dep_id + 1000, "canary_status": "completed"})
        for message in (rows[2], rows[0], rows[1], rows[3], rows[3]):
            await rt.bus.publish(dep_id, message)
        got = [await asyncio.wait_for(anext(stream), 10) for _ in range(6)]
        assert [m["seq"] for m in got] == [start + i for i in range(1, 7)]
        assert [m["reasons"] for m in got] == [[f"synthetic {i}"] for i in range(6)]

        # The real server rolls back; its events reach this stream through the database alone.
        r = await s.api.post(f"/deployments/{dep_id}/rollback", json={"reason": "test"})
        assert r.status_code == 202, r.text
        rest = [m async for m in stream]
    assert rest[-1]["final"] is True and rest[-1]["canary_status"] == "rolled_back"
    assert [m["seq"] for m in rest if m["type"] == "event"] == list(
        range(start + 7, start + 7 + sum(m["type"] == "event" for m in rest))
    )
    assert [e["seq"] for e in await s.events(dep_id)][-1] == [m["seq"] for m in rest if m["type"] == "event"][
        -1
    ]


async def test_redis_channels_are_per_database() -> None:
    """Pub/sub channels are global to a Redis server: buses on databases 1 and 2 do not hear each other."""
    from redis.asyncio import Redis
    from tests.conftest import REDIS

    from canaryd.engine.bus import RedisBus

    one, two = (
        RedisBus(Redis.from_url(f"redis://127.0.0.1:{REDIS[1]}/1")),
        RedisBus(Redis.from_url(f"redis://127.0.0.1:{REDIS[1]}/2")),
    )
    try:
        async with one.subscribe(1) as heard_by_one, two.subscribe(1) as heard_by_two:
            await two.publish(1, {"type": "event", "deployment_id": 1, "seq": 7})
            assert await asyncio.wait_for(anext(aiter(heard_by_two)), 5) == {
                "type": "event",
                "deployment_id": 1,
                "seq": 7,
            }
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(aiter(heard_by_one)), 0.5)
    finally:
        await one.close()
        await two.close()


async def test_redis_bus_shares_one_subscription_per_deployment() -> None:
    """Subscribers of one deployment in one process share one Redis subscription: each hears every message,
    one leaving does not cut the others off, a later subscriber is subscribed afresh, and all of them hold
    only one pub/sub connection."""
    from redis.asyncio import Redis
    from tests.conftest import REDIS

    from canaryd.engine.bus import RedisBus

    db = 3
    bus, probe = (
        RedisBus(Redis.from_url(f"redis://127.0.0.1:{REDIS[1]}/{db}")),
        Redis.from_url(f"redis://127.0.0.1:{REDIS[1]}/{db}"),
    )
    channel = f"canaryd:db{db}:deployment:5"

    async def hear(stream: Any) -> Any:
        return await asyncio.wait_for(anext(aiter(stream)), 5)

    try:
        async with bus.subscribe(5) as first:
            async with bus.subscribe(5) as second, bus.subscribe(5) as third:
                assert (await probe.pubsub_numsub(channel))[0][1] == 1
                await bus.publish(5, {"seq": 1})
                assert [await hear(s) for s in (first, second, third)] == [{"seq": 1}] * 3
            await bus.publish(5, {"seq": 2})
            assert await hear(first) == {"seq": 2}
        assert (await probe.pubsub_numsub(channel))[0][1] == 0
        async with bus.subscribe(5) as again:
            await bus.publish(5, {"seq": 3})
            assert await hear(again) == {"seq": 3}
    finally:
        await bus.close()
        await probe.aclose()


async def test_websocket_refusals_have_codes(embedded_stack: Stack) -> None:
    """Refusals are accepted, then closed with 4401 (token), 4404 (deployment), 4422 (after_seq); a client
    message over the body limit closes with 1009."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy("v2", STILL)
    dep_id = r.json()["id"]
    cases = [
        (ws_url(s, dep_id), {}, 4401),
        (ws_url(s, dep_id, "?token=wrong"), {}, 4401),
        (ws_url(s, 424242), AUTH, 4404),
        (ws_url(s, dep_id, "?after_seq=x"), AUTH, 4422),
    ]
    for url, headers, code in cases:
        async with connect(url, additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == code, (url, ws.close_code, ws.close_reason)
            assert ws.close_reason
    async with connect(ws_url(s, dep_id), additional_headers=AUTH, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "status"
        await ws.send("x" * (s.settings.max_body_bytes + 1))
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def raw_request(
    port: int, head: bytes, body_chunks: int, chunk: bytes, chunked: bool
) -> tuple[str, int]:
    """Sends a request with a raw socket, as fast as the server takes it, while reading the answer; returns the
    status line and the number of body bytes written before the answer came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.readline())
    writer.write(head)
    sent = 0
    try:
        for _ in range(body_chunks):
            if answer.done():
                break
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(chunk)
    except (ConnectionError, TimeoutError):
        pass  # the server answered and closed while this was still writing
    status = await asyncio.wait_for(answer, 10)
    writer.close()
    return status.decode().strip(), sent


async def test_oversized_bodies_get_413_before_being_read(embedded_stack: Stack) -> None:
    """A 2 MiB body declared by Content-Length gets 413 without being read; a chunked body is cut off after
    the 1 MiB limit. The server's memory does not grow by what was sent."""
    s = embedded_stack
    port = int(s.base.rsplit(":", 1)[1])
    path = b"/api/v1/applications/1/deployments"
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    for _ in range(2):  # warm up: the first requests allocate what any request does
        r = await s.api.post("/applications/1/deployments", content=b"{" + b" " * 1000 + b"}")
    before = rss_kib()
    head = (
        b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (path, auth, 2 * 1024 * 1024)
    )
    status, _ = await raw_request(port, head, 32, b"x" * 65536, chunked=False)
    assert status == "HTTP/1.1 413 Request Entity Too Large", status
    head = (
        b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        % (path, auth)
    )
    status, sent = await raw_request(port, head, 3200, b"x" * 65536, chunked=True)  # up to 200 MiB
    assert status == "HTTP/1.1 413 Request Entity Too Large", status
    grown = rss_kib() - before
    print(f"chunked body: {sent} bytes written before the 413; process RSS grew by {grown} KiB")
    assert sent < 64 * 1024 * 1024, f"the server kept reading: {sent} bytes went through"
    assert grown < 16 * 1024, f"the process grew by {grown} KiB while {sent} bytes were sent"
    r = await s.api.post("/servers", json={"name": "ok", "host": "127.0.0.1", "transport": "local"})
    assert r.status_code == 201, "an ordinary request still works"


async def test_caught_up_streams_are_sent_to_from_the_bus(embedded_stack: Stack) -> None:
    """A stream that has sent everything and waits gets the bus's next batch through `send_now` on the
    spot, without its task; a batch that needs the database (a gap), or that `send_now` refuses (a slow
    client), goes through the task as before; the order is the same either way."""
    s = embedded_stack
    dep_id = await monitoring_deployment(s)
    start = len(await s.events(dep_id))
    sent: list[list[dict[str, Any]]] = []
    accept = True

    def send_now(batch: list[dict[str, Any]]) -> bool:
        if accept:
            sent.append(batch)
        return accept

    async with open_runtime(s.settings, "api") as rt:
        stream = live.follow_batches(rt, dep_id, after_seq=None, idle_poll=60, send_now=send_now)
        assert (await anext(stream))[0]["type"] == "status"
        rows = []
        async with unit_of_work(rt.sessions) as session:
            for i in range(4):
                row = await EventRepository(session).append(
                    event_row(dep_id, Event(EventKind.HEALTH_CHECK, (f"synthetic {i}",)), utcnow(), None)
                )
                rows.append({"type": "event", **event_view(row)})
        status = {"type": "status", "id": dep_id, "canary_status": "monitoring", "updated_at": "9"}
        waiting = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.05)  # the stream waits on the bus
        await rt.bus.publish_many(dep_id, [rows[0], status])
        await asyncio.sleep(0.05)
        assert [[m.get("seq") for m in b] for b in sent] == [[start + 1, None]] and not waiting.done()
        await rt.bus.publish_many(dep_id, [rows[0]])  # a duplicate: nothing to send, nothing woken
        await rt.bus.publish_many(dep_id, [rows[2]])  # past a gap: the task reads the 2nd and sends both
        batch = await asyncio.wait_for(waiting, 10)
        assert [m["seq"] for m in batch] == [start + 2, start + 3] and len(sent) == 1
        accept = False  # a slow client: the task sends it
        waiting = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.05)
        await rt.bus.publish_many(dep_id, [rows[3], {**status, "updated_at": "8"}])  # an older status too
        assert [m["seq"] for m in await asyncio.wait_for(waiting, 10)] == [start + 4]
        await stream.aclose()
