"""Live event fan-out to WebSocket subscribers: in-process (embedded) or Redis pub/sub (production).

Delivery is at most once and unordered across publishers; services/live.py puts events in order, fills gaps
from the database and drops duplicates, so the bus only has to be fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError


class EventBus(Protocol):
    async def publish(self, deployment_id: int, message: dict[str, Any]) -> None: ...

    def subscribe(self, deployment_id: int) -> Any:
        """An async context manager yielding an async iterator of messages."""
        ...

    async def close(self) -> None: ...


class LocalBus:
    """Subscribers in this process only. Slow subscribers lose nothing: queues are unbounded but short-lived."""

    def __init__(self) -> None:
        self._queues: dict[int, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    async def publish(self, deployment_id: int, message: dict[str, Any]) -> None:
        for queue in list(self._queues.get(deployment_id, ())):
            queue.put_nowait(message)

    @asynccontextmanager
    async def subscribe(self, deployment_id: int) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues[deployment_id].add(queue)

        async def messages() -> AsyncIterator[dict[str, Any]]:
            while True:
                yield await queue.get()

        try:
            yield messages()
        finally:
            self._queues[deployment_id].discard(queue)
            if not self._queues[deployment_id]:
                del self._queues[deployment_id]

    async def close(self) -> None:
        self._queues.clear()


class RedisBus:
    """Redis pub/sub, so a subscriber on any API replica sees events published by any worker."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # Pub/sub channels are global to a Redis server, whatever database a client selected: two canaryd
        # installations (or two test runs) on databases 1 and 2 of one server would hear each other's
        # deployment 1. The database number keeps them apart, as it does for everything else they store.
        self._db = int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)

    def _channel(self, deployment_id: int) -> str:
        return f"canaryd:db{self._db}:deployment:{deployment_id}"

    async def publish(self, deployment_id: int, message: dict[str, Any]) -> None:
        await self._redis.publish(self._channel(deployment_id), json.dumps(message, default=str))

    @asynccontextmanager
    async def subscribe(self, deployment_id: int) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel(deployment_id))
        # subscribe() only sends the command: wait until Redis confirms it, so that anything published after
        # this returns is delivered (the WebSocket reads the database's backlog after subscribing).
        while True:
            confirmation = await pubsub.get_message(timeout=10.0)
            if confirmation is None:
                raise ConnectionError("Redis did not confirm the subscription within 10 s")
            if confirmation.get("type") == "subscribe":
                break

        async def messages() -> AsyncIterator[dict[str, Any]]:
            while True:
                raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                if raw is not None and raw.get("type") == "message":
                    yield json.loads(raw["data"])

        try:
            yield messages()
        finally:
            with contextlib.suppress(RedisError, ConnectionError, OSError):  # Redis may be gone by now
                await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._redis.aclose()
