"""Live event fan-out to WebSocket subscribers: in-process (embedded) or Redis pub/sub (production).

Delivery is at most once and unordered across publishers; services/live.py puts events in order, fills gaps
from the database and drops duplicates, so the bus only has to be fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from canaryd.db.jsontext import message_text, parse
from canaryd.engine.batch import Batcher

log = logging.getLogger(__name__)


def encode(message: dict[str, Any]) -> str:
    """A message as JSON text: compact, as a WebSocket frame carries it (orjson: a status and an event of
    ~5 KB each are published at every check)."""
    return message_text(message)


class BusMessage(dict[str, Any]):
    """A message as the bus hands it to every local subscriber: one object for all of them, with its JSON
    text made once (500 WebSockets on a deployment used to encode each message 500 times). Not to be
    changed once published."""

    __slots__ = ("_text", "_wire")

    def __init__(self, message: dict[str, Any], text: str | None = None) -> None:
        super().__init__(message)
        self._text = text
        self._wire: bytes | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = encode(self)
        return self._text

    def wire(self, make: Callable[[str], bytes]) -> bytes:
        """The text as a transport carries it (a WebSocket frame), made once by `make` for every subscriber."""
        if self._wire is None:
            self._wire = make(self.text)
        return self._wire


class Subscription:
    """One subscriber's messages: `await get()` for the next one (it raises the error that ended the
    subscription, such as a lost Redis connection); also an async iterator. A queue rather than an async
    generator, so the live view waits on it directly, with no task in between to relay each message (a task
    switch per message per subscriber). One reader; a get() cancelled while waiting loses nothing. A deque
    and one future rather than asyncio.Queue, whose bookkeeping for join() cost every message of every
    subscriber."""

    __slots__ = ("_direct", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[dict[str, Any] | Exception] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._direct: Callable[[list[dict[str, Any]]], bool] | None = None

    def deliver(self, messages: list[dict[str, Any]]) -> None:
        """Messages that arrived together (an event and the status behind it). While the reader waits in
        `get(direct)` with nothing queued, `direct` may handle them on the spot (send them to a client that
        is caught up) without waking the reader; otherwise, or when it declines, they are queued."""
        direct = self._direct
        if direct is not None and not self._items:
            try:
                if direct(messages):
                    return
            except Exception:  # a fault of the subscriber's must not stop the bus's other subscribers
                log.exception("a subscriber failed to take messages directly; queueing them")
        for message in messages:
            self.put(message)

    def put(self, item: dict[str, Any] | Exception) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def ready(self) -> bool:
        """A message (or the error) is waiting: get() returns without waiting."""
        return bool(self._items)

    async def get(self, direct: Callable[[list[dict[str, Any]]], bool] | None = None) -> dict[str, Any]:
        """The next message. While waiting, messages delivered together go to `direct` first, which returns
        True when it dealt with them (they are then not queued) and False to have them queued."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            self._direct = direct
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._direct = None
        return self.get_nowait()

    def get_nowait(self) -> dict[str, Any]:
        """The next message when ready() (IndexError otherwise), without a turn of the loop."""
        item = self._items.popleft()
        if isinstance(item, Exception):
            raise item
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.get()


class EventBus(Protocol):
    async def publish(self, deployment_id: int, message: dict[str, Any]) -> None: ...

    async def publish_many(self, deployment_id: int, messages: Sequence[dict[str, Any]]) -> None:
        """Messages of one write (its events, then the status), in order and together: a subscriber hears
        them in the same turn and sends them to its WebSocket client at once."""
        ...

    def subscribe(self, deployment_id: int) -> Any:
        """An async context manager yielding a Subscription."""
        ...

    async def close(self) -> None: ...


class LocalBus:
    """Subscribers in this process only. Slow subscribers lose nothing: queues are unbounded but short-lived."""

    def __init__(self) -> None:
        self._queues: dict[int, set[Subscription]] = defaultdict(set)

    async def publish(self, deployment_id: int, message: dict[str, Any]) -> None:
        await self.publish_many(deployment_id, [message])

    async def publish_many(self, deployment_id: int, messages: Sequence[dict[str, Any]]) -> None:
        shared: list[dict[str, Any]] = [
            BusMessage(m) for m in messages
        ]  # copies: the publisher may reuse its dicts
        for queue in list(self._queues.get(deployment_id, ())):
            queue.deliver(shared)

    @asynccontextmanager
    async def subscribe(self, deployment_id: int) -> AsyncIterator[Subscription]:
        queue = Subscription()
        self._queues[deployment_id].add(queue)
        try:
            yield queue
        finally:
            self._queues[deployment_id].discard(queue)
            if not self._queues[deployment_id]:
                del self._queues[deployment_id]

    async def close(self) -> None:
        self._queues.clear()


class RedisBus:
    """Redis pub/sub, so a subscriber on any API replica sees events published by any worker.

    A process holds one pub/sub connection, subscribed once to each deployment that has local subscribers;
    one reader task decodes each message once and hands it, with the text it came as, to every local
    subscriber's queue. (A connection per WebSocket made Redis send, and this process read and decode, every
    message once per subscriber: 500 subscribers of one deployment took seconds to all hear an event.)
    When the connection is lost, every local stream ends with ConnectionError (the live view falls back to
    reading the database) and the next subscription opens a new connection."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # Pub/sub channels are global to a Redis server, whatever database a client selected: two canaryd
        # installations (or two test runs) on databases 1 and 2 of one server would hear each other's
        # deployment 1. The database number keeps them apart, as it does for everything else they store.
        self._db = int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queues: dict[str, set[Subscription]] = {}
        #: Channels whose SUBSCRIBE was sent, resolved when Redis confirms it.
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._guard = asyncio.Lock()
        #: Messages published together (many ticks' events and statuses) go in one pipeline, one round trip.
        self._publishes: Batcher[tuple[str, str], Any] = Batcher(self._publish_many, 500)
        #: Messages read in this turn of the loop, by channel, handed to the subscribers together at its end.
        self._arrived: dict[str, list[dict[str, Any]]] = {}

    def _channel(self, deployment_id: int) -> str:
        return f"canaryd:db{self._db}:deployment:{deployment_id}"

    async def publish(self, deployment_id: int, message: dict[str, Any]) -> None:
        await self._publishes.submit((self._channel(deployment_id), encode(message)))

    async def publish_many(self, deployment_id: int, messages: Sequence[dict[str, Any]]) -> None:
        # One pipeline: Redis sends them to each subscriber together. Published one after the other, the
        # event reached every WebSocket a round trip before its status: two wake-ups and sends per client.
        channel = self._channel(deployment_id)
        await self._publishes.submit_many([(channel, encode(m)) for m in messages])

    async def _publish_many(self, messages: Sequence[tuple[str, str]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.publish(channel, data)
            return list(await pipe.execute())

    @asynccontextmanager
    async def subscribe(self, deployment_id: int) -> AsyncIterator[Subscription]:
        """Returns once Redis confirmed the subscription, so that anything published after this returns is
        delivered (the WebSocket reads the database's backlog after subscribing)."""
        channel = self._channel(deployment_id)
        queue = Subscription()
        await self._join(channel, queue)
        try:
            yield queue
        finally:
            await self._leave(channel, queue)

    async def _join(self, channel: str, queue: Subscription) -> None:
        async with self._guard:
            confirmed = self._pending.get(channel)
            if confirmed is None and channel not in self._queues:
                if self._pubsub is None:
                    self._pubsub = self._redis.pubsub()
                confirmed = asyncio.get_running_loop().create_future()
                self._pending[channel] = confirmed
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    del self._pending[channel]
                    raise
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(self._pubsub))
        if confirmed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), 10.0)
            except TimeoutError:
                raise ConnectionError("Redis did not confirm the subscription within 10 s") from None
        self._queues.setdefault(channel, set()).add(queue)

    async def _leave(self, channel: str, queue: Subscription) -> None:
        async with self._guard:  # an UNSUBSCRIBE never overtakes a later SUBSCRIBE of the same channel
            queues = self._queues.get(channel)
            if queues is None:
                return
            queues.discard(queue)
            if not queues and channel not in self._pending:
                del self._queues[channel]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError, ConnectionError, OSError):  # Redis may be gone
                        await self._pubsub.unsubscribe(channel)

    async def _read(self, pubsub: PubSub) -> None:
        """Hands every message to the local subscribers of its channel; on a lost connection, ends them all."""
        try:
            while True:
                raw = await pubsub.get_message(timeout=30.0)
                if raw is None:
                    continue
                channel = (
                    raw["channel"].decode() if isinstance(raw["channel"], bytes) else str(raw["channel"])
                )
                if raw["type"] == "subscribe":
                    confirmed = self._pending.pop(channel, None)
                    if confirmed is not None and not confirmed.done():
                        confirmed.set_result(None)
                elif raw["type"] == "message":
                    text = raw["data"].decode() if isinstance(raw["data"], bytes) else str(raw["data"])
                    if not self._arrived:
                        asyncio.get_running_loop().call_soon(self._hand_over)
                    self._arrived.setdefault(channel, []).append(BusMessage(parse(text), text))
        except (RedisError, ConnectionError, OSError) as exc:
            self._lost(pubsub, exc)
            with contextlib.suppress(RedisError, ConnectionError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _hand_over(self) -> None:
        """Gives what arrived in this turn (a write's event and status come in one pipeline, hence usually
        in the same read) to each local subscriber in one piece: one wake-up, or one direct send, per
        subscriber and write instead of one per message."""
        arrived, self._arrived = self._arrived, {}
        for channel, messages in arrived.items():
            for queue in list(self._queues.get(channel, ())):
                queue.deliver(messages)

    def _lost(self, pubsub: PubSub, exc: Exception) -> None:
        self._hand_over()  # what arrived before the loss comes before the error
        if self._pubsub is pubsub:
            self._pubsub = None
        for confirmed in self._pending.values():
            if not confirmed.done():
                confirmed.set_exception(ConnectionError(f"lost Redis: {exc}"))
        for queues in self._queues.values():
            for queue in queues:
                queue.put(ConnectionError(f"lost Redis: {exc}"))
        self._pending.clear()
        self._queues.clear()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, ConnectionError, OSError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, ConnectionError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()
