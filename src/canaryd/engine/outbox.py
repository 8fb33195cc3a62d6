"""Notifications that arrive: the outbox of webhook deliveries and the loop that empties it.

`enqueue()` is called by every writer of history events, inside the transaction that writes them: the
deliveries of an event commit with the event or not at all, so a crash or a restart loses none.

`Outbox.run_forever()` runs in every worker (and in the embedded server). Each round it leases the due head
of every subscription's queue (db/webhooks.py `claim`), POSTs them concurrently, and records each outcome:
2xx is delivered; anything else (another status, a refused connection, a timeout) is tried again after
`backoff()` until `webhook_max_attempts`, then marked failed and the queue moves on. A worker that dies
mid-attempt leaves a lease that expires after `webhook_timeout + LEASE_MARGIN` seconds; another worker then
sends the same delivery again, with the same `X-Canaryd-Delivery` key: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd import __version__
from canaryd.db.engine import unit_of_work
from canaryd.db.models import Application, Deployment, DeploymentEvent, WebhookDelivery
from canaryd.db.webhooks import DELIVERED, FAILED, PENDING, DeliveryRepository, WebhookRepository
from canaryd.domain.notifications import (
    SUBSCRIBABLE,
    Format,
    backoff,
    body,
    payload,
    signature,
    subscribed,
)
from canaryd.engine.ports import Clock
from canaryd.engine.views import deployment_status, event_view
from canaryd.observability import Metrics

log = logging.getLogger(__name__)

#: Seconds a lease outlives the longest attempt, for recording its outcome.
LEASE_MARGIN = 5.0
#: Deliveries leased at once by one worker (at most one per subscription).
BATCH = 50
#: How often old delivered and failed deliveries are deleted.
PRUNE_EVERY_SECONDS = 3600.0


async def enqueue(session: AsyncSession, dep: Deployment, rows: Sequence[DeploymentEvent]) -> int:
    """Inserts a delivery for every subscription of each event's kind, in the caller's transaction and in
    event order; returns how many. `rows` must be flushed (they need their id and seq)."""
    if not any(row.kind in SUBSCRIBABLE for row in rows):
        return 0  # most ticks record only a health check, which nobody can subscribe to: no read
    hooks = await WebhookRepository(session).all()
    wanted = [(row, hook) for row in rows for hook in hooks if subscribed(hook.events, row.kind)]
    if not wanted:
        return 0
    app = await session.get(Application, dep.application_id)
    application = {"id": dep.application_id, "name": app.name if app is not None else ""}
    status = deployment_status(dep, {})
    deliveries = []
    for row, hook in wanted:
        key = str(uuid.uuid4())
        deliveries.append(
            WebhookDelivery(
                webhook_id=hook.id,
                key=key,
                event_kind=row.kind,
                deployment_id=dep.id,
                event_seq=row.seq,
                payload=payload(key, event_view(row), application, status),
                status=PENDING,
                attempts=0,
                next_attempt_at=row.at,
                created_at=row.at,
            )
        )
    # One flush: SQLAlchemy inserts them in this order (on PostgreSQL its multi-row INSERT is sorted by
    # parameter order), so ids follow event order, which the delivery order relies on.
    await DeliveryRepository(session).add_all(deliveries)
    return len(wanted)


@dataclass(frozen=True, slots=True)
class DeliveryTerms:
    timeout: float
    max_attempts: int
    backoff: float
    backoff_max: float
    poll_interval: float
    retention_days: float

    @property
    def lease_seconds(self) -> float:
        return self.timeout + LEASE_MARGIN


@dataclass(frozen=True, slots=True)
class Claimed:
    """A leased delivery and what sending it needs, read before its session closed."""

    id: int
    key: str
    webhook_id: int
    url: str
    secret: str | None
    format: Format
    kind: str
    attempts: int
    body: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    status_code: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds or an HTTP date) in seconds; None when absent or unreadable."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    return None


def where(url: str) -> str:
    """The part of a subscription's URL that logs may show: its host (the path may hold a credential, as
    Slack's webhook URLs do)."""
    return urlsplit(url).hostname or "?"


class Outbox:
    """Delivers the outbox: one instance per process, over the clients the runtime made at start-up."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        clock: Clock,
        metrics: Metrics,
        terms: DeliveryTerms,
        owner: str,
    ) -> None:
        self.sessions, self.http, self.clock = sessions, http, clock
        self.metrics, self.terms, self.owner = metrics, terms, owner

    async def run_forever(self) -> None:
        """Delivers what is due, round after round; waits `poll_interval` when nothing was. Until cancelled."""
        pruned = time.monotonic()
        while True:
            sent = 0
            try:
                sent = await self.deliver_due()
                if time.monotonic() - pruned > PRUNE_EVERY_SECONDS:
                    pruned = time.monotonic()
                    await self.prune()
            except Exception:
                log.exception("webhook deliveries failed; trying again in %s s", self.terms.poll_interval)
            if not sent:
                await asyncio.sleep(self.terms.poll_interval)

    async def deliver_due(self) -> int:
        """One round: leases the due deliveries, sends them concurrently, records each; returns how many."""
        lease = f"{self.owner[:60]}:{uuid.uuid4().hex[:12]}"
        now = self.clock.now()
        until = now + timedelta(seconds=self.terms.lease_seconds)
        async with unit_of_work(self.sessions) as session:
            rows = await DeliveryRepository(session).claim(lease, now, until, BATCH)
            claimed = [
                Claimed(
                    d.id,
                    d.key,
                    w.id,
                    w.url,
                    w.secret,
                    "slack" if w.format == "slack" else "json",
                    d.event_kind,
                    d.attempts,
                    body("slack" if w.format == "slack" else "json", d.payload),
                    d.created_at,
                )
                for d, w in rows
            ]
        results = await asyncio.gather(*(self._deliver(c, lease) for c in claimed), return_exceptions=True)
        for c, result in zip(claimed, results, strict=True):
            if isinstance(result, BaseException):
                log.error("webhook %s: recording delivery %s failed: %r", c.webhook_id, c.key, result)
        return len(claimed)

    async def _deliver(self, c: Claimed, lease: str) -> None:
        attempt = await self.send(c)
        await self._record(c, lease, attempt)

    async def send(self, c: Claimed) -> Attempt:
        """One POST of a delivery, bounded by `timeout` in all."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"canaryd/{__version__}",
            "X-Canaryd-Delivery": c.key,
            "X-Canaryd-Event": c.kind,
            "X-Canaryd-Attempt": str(c.attempts + 1),
        }
        if c.secret:
            headers["X-Canaryd-Signature"] = signature(c.secret, c.body)
        try:
            async with asyncio.timeout(self.terms.timeout):
                response = await self.http.post(
                    c.url, content=c.body, headers=headers, timeout=self.terms.timeout
                )
        except TimeoutError:
            return Attempt(None, f"no answer within {self.terms.timeout:g} s")
        except (httpx.HTTPError, OSError) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= response.status_code < 300:
            return Attempt(response.status_code, None)
        text = response.text[:200].strip()
        error = f"HTTP {response.status_code}" + (f": {text}" if text else "")
        return Attempt(
            response.status_code,
            error[:500],
            retry_after_seconds(response.headers.get("retry-after"), self.clock.now()),
        )

    async def _record(self, c: Claimed, lease: str, attempt: Attempt) -> None:
        now = self.clock.now()
        attempts = c.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": attempt.status_code,
            "last_error": attempt.error,
        }
        if attempt.ok:
            values.update(status=DELIVERED, finished_at=now)
            outcome = "delivered"
        elif attempts >= self.terms.max_attempts:
            values.update(status=FAILED, finished_at=now)
            outcome = "failed"
        else:
            wait = backoff(attempts, self.terms.backoff, self.terms.backoff_max, attempt.retry_after)
            values.update(next_attempt_at=now + timedelta(seconds=wait))
            outcome = "retried"
        async with unit_of_work(self.sessions) as session:
            held = await DeliveryRepository(session).finish(c.id, lease, **values)
        if not held:
            return  # the lease expired meanwhile: the delivery is another worker's now
        self.metrics.webhook_delivery(outcome, (now - c.created_at).total_seconds())
        if outcome == "failed":
            log.warning(
                "webhook %s (%s): delivery %s of %s failed after %d attempts: %s",
                c.webhook_id,
                where(c.url),
                c.key,
                c.kind,
                attempts,
                attempt.error,
            )
        elif outcome == "retried":
            log.info(
                "webhook %s (%s): attempt %d failed: %s", c.webhook_id, where(c.url), attempts, attempt.error
            )

    async def prune(self) -> int:
        before = self.clock.now() - timedelta(days=self.terms.retention_days)
        async with unit_of_work(self.sessions) as session:
            return await DeliveryRepository(session).prune(before)


__all__ = ["Attempt", "Claimed", "DeliveryTerms", "Outbox", "enqueue", "retry_after_seconds", "where"]
