"""A deployment's live stream, as the WebSocket sends it: the status, then every event in `seq` order with no
gap and no duplicate, then a final status once the deployment has finished.

The event bus (in-process, or Redis pub/sub between replicas and workers) delivers at most once and in no
guaranteed order across publishers; the database holds every event with its `seq` (1, 2, 3, … per
deployment, allocated under the deployment's lock and published only after commit). So:

1. subscribe to the bus first, then read the status and the backlog (`seq > after_seq`) from the database:
   an event committed in between is in the backlog, on the bus, or both — never in neither;
2. pass on an event only if its seq is the next one; drop one already sent (a duplicate, or the live copy of
   a backlog event); when an event arrives past a gap, read the missing ones from the database first (they
   are committed: seq N+1 is allocated only after seq N's transaction committed);
3. when nothing arrives for `idle_poll` seconds, read the database anyway, so a message the bus lost (Redis
   restarted, a subscriber fell behind) costs at most that long (plus up to a second: the newest seq is
   read once per deployment and second for every stream of the process, db/latest_seq.py);
4. after an event or status that reaches a terminal state, read the final status from the database, send
   it, and end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.db.repositories import EventRepository
from canaryd.engine.bus import Subscription
from canaryd.engine.views import event_view
from canaryd.runtime import Runtime
from canaryd.services import deployments

log = logging.getLogger(__name__)
TERMINAL = frozenset({"completed", "rolled_back", "failed"})
_PAGE = 1000


class EventOrder:
    """Which events to send, in order: the bookkeeping of steps 2 and 3, without I/O."""

    def __init__(self, last_sent: int) -> None:
        self.last_sent = last_sent

    def fresh(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events that continue the sequence without a gap, in order; the rest are dropped."""
        out = []
        for event in sorted(events, key=lambda e: int(e["seq"])):
            if int(event["seq"]) == self.last_sent + 1:
                out.append(event)
                self.last_sent += 1
        return out

    def gap_before(self, seq: int) -> bool:
        return seq > self.last_sent + 1


async def _events_after(
    session: AsyncSession, deployment_id: int, after: int, upto: int | None = None
) -> list[dict[str, Any]]:
    # The events alone (the status read found the deployment): the idle poll of every client runs this.
    out: list[dict[str, Any]] = []
    events = EventRepository(session)
    while True:
        page = await events.list(deployment_id, after, _PAGE)
        out += [{"type": "event", **event_view(e)} for e in page if upto is None or e.seq <= upto]
        if len(page) < _PAGE or (upto is not None and page[-1].seq >= upto):
            return out
        after = page[-1].seq


def _finished(message: dict[str, Any]) -> bool:
    if message.get("type") == "event":
        return message.get("to_state") in TERMINAL
    return message.get("canary_status") in TERMINAL


class _Relay:
    """What one client has been sent: events continue the sequence (gaps read from the database), and a status
    is never older than the last one sent. `finished` once a terminal event or status went out."""

    def __init__(self, rt: Runtime, deployment_id: int, order: EventOrder, status: dict[str, Any]) -> None:
        self.rt, self.deployment_id, self.order = rt, deployment_id, order
        self.last_status_at = str(status.get("updated_at") or "")
        self.finished = _finished(status)

    async def catch_up(self, session: AsyncSession | None = None) -> list[dict[str, Any]]:
        """Every committed event not sent yet (the backlog, or what the bus lost)."""
        if session is not None:
            return self._sending(await _events_after(session, self.deployment_id, self.order.last_sent))
        async with self.rt.read_sessions() as session:
            return self._sending(await _events_after(session, self.deployment_id, self.order.last_sent))

    async def relay(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """What to send for one message from the bus (nothing, or the message with any events it skipped)."""
        out = self._at_once(message)
        if out is not None:
            return out
        seq = int(message["seq"])  # an event past a gap: the missing ones are committed, read them
        async with self.rt.read_sessions() as session:
            batch = await _events_after(session, self.deployment_id, self.order.last_sent, upto=seq)
        return self._sending(batch)

    def _at_once(self, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        """`relay` without the database: None for an event past a gap."""
        if message.get("deployment_id", message.get("id")) != self.deployment_id:
            return []  # not this deployment's (a misrouted message must not end or corrupt the stream)
        if message.get("type") == "event":
            if self.order.gap_before(int(message["seq"])):
                return None
            return self._sending([message])
        at = str(message.get("updated_at") or "")
        if message.get("type") == "status" and at >= self.last_status_at:
            # Statuses carry no seq; an older one (from a slower publisher) is not sent after a newer.
            self.last_status_at, self.finished = at, _finished(message)
            return [message]
        return []

    def send_now(self, messages: list[dict[str, Any]], send: Callable[[list[dict[str, Any]]], bool]) -> bool:
        """Relays messages that arrived together through `send` on the spot, when that needs no database
        read and does not end the stream; False (nothing sent, nothing changed) otherwise, or when `send`
        refuses (a client reading slowly): the stream's task then relays them as any other."""
        if any(_finished(m) for m in messages):
            return False  # the end: the stream reads the final status after it
        saved = self.order.last_sent, self.last_status_at
        out: list[dict[str, Any]] = []
        for message in messages:
            more = self._at_once(message)
            if more is None:
                break
            out += more
        else:
            if not out or send(out):
                return True
        self.order.last_sent, self.last_status_at = saved
        return False

    def _sending(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fresh = self.order.fresh(events)
        self.finished = self.finished or any(_finished(e) for e in fresh)
        return fresh


async def _subscribe(stack: contextlib.AsyncExitStack, rt: Runtime, deployment_id: int) -> Subscription:
    """The deployment's messages on the bus; without a bus, a subscription that never hears anything (the
    stream then polls the database)."""
    try:
        subscription: Subscription = await stack.enter_async_context(rt.bus.subscribe(deployment_id))
    except (ConnectionError, OSError, RedisError) as exc:
        log.warning("event bus unavailable for deployment %s (%s): polling the database", deployment_id, exc)
        return Subscription()
    return subscription


async def follow(
    rt: Runtime, deployment_id: int, after_seq: int | None, idle_poll: float = 5.0
) -> AsyncGenerator[dict[str, Any]]:
    """Messages for one WebSocket client; raises NotFound for an unknown deployment before yielding."""
    batches = follow_batches(rt, deployment_id, after_seq, idle_poll)
    try:
        async for batch in batches:
            for message in batch:
                yield message
    finally:
        await batches.aclose()


async def follow_batches(
    rt: Runtime,
    deployment_id: int,
    after_seq: int | None,
    idle_poll: float = 5.0,
    send_now: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> AsyncGenerator[list[dict[str, Any]]]:
    """`follow`'s messages, in lists of those ready together (an event and the status behind it), so that
    the WebSocket writes them to its client at once.

    `send_now(batch) -> bool`, if given, sends a batch to the client at once without waiting, or returns
    False. While the stream has sent everything yielded so far and waits for the bus, a batch from the bus
    that needs no database read goes through it straight from the bus's hand-over, without waking this
    generator's task (with 500 subscribers, waking each stream's task and stepping it was a fifth of a
    fan-out's CPU, and the publishing request's response waited behind them all). The order is the same:
    it is used only while nothing is queued and everything yielded before has been sent."""
    async with contextlib.AsyncExitStack() as stack:
        inbox = await _subscribe(stack, rt, deployment_id)
        relay, opening = await _open(rt, deployment_id, after_seq)
        yield opening
        alarm = _Alarm(inbox, idle_poll)

        def direct(messages: list[dict[str, Any]]) -> bool:
            assert send_now is not None
            if relay.send_now(messages, send_now):
                alarm.heard()
                return True
            return False

        take = None if send_now is None else direct
        try:
            while not relay.finished:
                out = await _next_batch(rt, deployment_id, relay, alarm, take)
                if out:
                    yield out
        finally:
            alarm.cancel()
        # The final word comes from the database, after every event of the end was sent.
        async with rt.read_sessions() as session:
            final = await deployments.get_status(session, deployment_id)
        yield [*await relay.catch_up(), {"type": "status", "final": True, **final}]


async def _open(
    rt: Runtime, deployment_id: int, after_seq: int | None
) -> tuple[_Relay, list[dict[str, Any]]]:
    """The relay and the first batch: the status, then the backlog after `after_seq`."""
    # One connection for the status, where the sequence stands and the backlog: 500 clients
    # connecting at once queued for the pool when each of these took a connection of its own.
    async with rt.read_sessions() as session:
        status = await deployments.get_status(session, deployment_id)
        if after_seq is None:
            # Nothing to catch up on: an event after this seq commits after this read, hence is
            # published after the subscription was confirmed.
            last = await EventRepository(session).last_seq(deployment_id)
            relay, backlog = _Relay(rt, deployment_id, EventOrder(last), status), []
        else:
            relay = _Relay(rt, deployment_id, EventOrder(after_seq), status)
            backlog = await relay.catch_up(session)
    return relay, [{"type": "status", **status}, *backlog]


async def _next_batch(
    rt: Runtime,
    deployment_id: int,
    relay: _Relay,
    alarm: _Alarm,
    take: Callable[[list[dict[str, Any]]], bool] | None,
) -> list[dict[str, Any]]:
    """One batch: the next message, and what the bus handed over in the same turn (the status behind its
    event); or, when the bus was quiet or lost, what the database has that was not sent."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            message = alarm.inbox.get_nowait() if out else await alarm.inbox.get(take)
        except _IdleError:
            alarm.rearm()
            if not out:
                # The idle poll (not when the bus was just heard): one query per deployment and second,
                # shared with this process's other streams, says whether the bus lost anything; only
                # then are the events read.
                newest = await rt.latest_seqs.get(rt.read_sessions, deployment_id)
                out = await relay.catch_up() if newest > relay.order.last_sent else []
            return out
        except _BUS_LOST as exc:
            alarm.inbox = _lost(deployment_id, exc)
            return out + await relay.catch_up()
        alarm.heard()
        out += await relay.relay(message)
        if not out or relay.finished or not alarm.inbox.ready():
            return out


_BUS_LOST = (ConnectionError, OSError, RedisError)


class _IdleError(Exception):
    """Put in a stream's inbox by its alarm: the bus has said nothing for `idle_poll` seconds."""


class _Alarm:
    """Wakes a stream that heard nothing for `seconds`, with one timer per quiet spell. (A timeout around
    each wait armed and cancelled a timer per message and subscriber: a tenth of a fan-out's CPU.)"""

    def __init__(self, inbox: Subscription, seconds: float) -> None:
        self.inbox, self.seconds = inbox, seconds
        self._loop = asyncio.get_running_loop()
        self._heard = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self._heard + seconds, self._ring)

    def heard(self) -> None:
        self._heard = self._loop.time()

    def rearm(self) -> None:
        self.heard()
        if self._handle is None:
            self._handle = self._loop.call_at(self._heard + self.seconds, self._ring)

    def _ring(self) -> None:
        due = self._heard + self.seconds
        if self._loop.time() < due:  # heard from since the timer was set: wait out the rest
            self._handle = self._loop.call_at(due, self._ring)
        else:
            self._handle = None
            self.inbox.put(_IdleError())

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _lost(deployment_id: int, exc: Exception) -> Subscription:
    log.warning("event bus lost for deployment %s (%s): polling the database", deployment_id, exc)
    return Subscription()
