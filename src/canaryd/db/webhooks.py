"""Queries of notification subscriptions and their delivery outbox. Repositories never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.db.models import Webhook, WebhookDelivery

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, hook: Webhook) -> Webhook:
        self.session.add(hook)
        await self.session.flush()
        return hook

    async def get(self, webhook_id: int) -> Webhook | None:
        return await self.session.get(Webhook, webhook_id)

    async def list(self, limit: int, offset: int) -> Sequence[Webhook]:
        rows = await self.session.execute(select(Webhook).order_by(Webhook.id).limit(limit).offset(offset))
        return rows.scalars().all()

    async def all(self) -> Sequence[Webhook]:
        """Every subscription (a short list: read whenever an event is recorded)."""
        return (await self.session.execute(select(Webhook).order_by(Webhook.id))).scalars().all()

    async def delete(self, hook: Webhook) -> None:
        await self.session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id))
        await self.session.delete(hook)

    async def counts(self, webhook_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Subscription id → {status: number of deliveries}."""
        if not webhook_ids:
            return {}
        rows = await self.session.execute(
            select(WebhookDelivery.webhook_id, WebhookDelivery.status, func.count())
            .where(WebhookDelivery.webhook_id.in_(list(webhook_ids)))
            .group_by(WebhookDelivery.webhook_id, WebhookDelivery.status)
        )
        out: dict[int, dict[str, int]] = {}
        for webhook_id, status, count in rows.all():
            out.setdefault(int(webhook_id), {})[str(status)] = int(count)
        return out


class DeliveryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_all(self, deliveries: Sequence[WebhookDelivery]) -> None:
        self.session.add_all(list(deliveries))
        await self.session.flush()

    async def page(
        self, webhook_id: int, status: str | None, before_id: int | None, limit: int
    ) -> Sequence[WebhookDelivery]:
        """A subscription's deliveries, newest first, continuing below `before_id` (keyset pagination)."""
        stmt = (
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        if status is not None:
            stmt = stmt.where(WebhookDelivery.status == status)
        if before_id is not None:
            stmt = stmt.where(WebhookDelivery.id < before_id)
        return (await self.session.execute(stmt)).scalars().all()

    async def claim(
        self, owner: str, now: datetime, until: datetime, limit: int
    ) -> Sequence[tuple[WebhookDelivery, Webhook]]:
        """Leases the due head of each subscription's queue (its oldest pending delivery) to `owner`.

        A head that is leased or waiting for its retry time holds its whole queue back: that is what keeps
        each subscriber's deliveries in order. PostgreSQL skips rows another worker is claiming (`FOR
        UPDATE SKIP LOCKED`) and re-checks the lease of a row committed meanwhile; SQLite runs the whole
        transaction under its write lock (`BEGIN IMMEDIATE`, db/engine.py)."""
        heads = (
            select(func.min(WebhookDelivery.id))
            .where(WebhookDelivery.status == PENDING)
            .group_by(WebhookDelivery.webhook_id)
        )
        due = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.id.in_(heads),
                # Checked again on the row itself: PostgreSQL re-evaluates these conditions (not the
                # subquery) on a row another worker changed meanwhile, so a just-finished head is not re-sent.
                WebhookDelivery.status == PENDING,
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
            )
            .order_by(WebhookDelivery.id)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        ids = list((await self.session.execute(due)).scalars().all())
        if not ids:
            return []
        await self.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(lease_owner=owner, lease_until=until)
            .execution_options(synchronize_session=False)
        )
        rows = await self.session.execute(
            select(WebhookDelivery, Webhook)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.id.in_(ids))
            .order_by(WebhookDelivery.id)
            .execution_options(populate_existing=True)
        )
        return [(d, w) for d, w in rows.all()]

    async def finish(self, delivery_id: int, owner: str, **values: object) -> bool:
        """Records an attempt's outcome and releases the lease, if `owner` still holds it (a worker whose
        lease expired meanwhile records nothing: another one owns the delivery now)."""
        result = await self.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.lease_owner == owner)
            .values(lease_owner=None, lease_until=None, **values)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0))

    async def prune(self, before: datetime) -> int:
        """Deletes delivered and failed deliveries that finished before `before`."""
        result = await self.session.execute(
            delete(WebhookDelivery).where(
                and_(WebhookDelivery.status != PENDING, WebhookDelivery.finished_at < before)
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)
