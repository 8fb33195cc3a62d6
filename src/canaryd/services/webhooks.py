"""Notification subscriptions: create, read, delete, and the state of their deliveries.

The secret is stored (it signs every body) and never leaves: views say `secret_set` only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.db.models import Webhook, WebhookDelivery
from canaryd.db.webhooks import PENDING, DeliveryRepository, WebhookRepository
from canaryd.services.errors import NotFound
from canaryd.services.webhook_schemas import WebhookCreate


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def webhook_view(hook: Webhook, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "format": hook.format,
        "description": hook.description,
        "secret_set": bool(hook.secret),
        "created_by": hook.created_by,
        "created_at": _iso(hook.created_at),
        "deliveries": {k: counts.get(k, 0) for k in ("pending", "delivered", "failed")},
    }


def delivery_view(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "key": d.key,
        "event_kind": d.event_kind,
        "deployment_id": d.deployment_id,
        "event_seq": d.event_seq,
        "status": d.status,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "next_attempt_at": _iso(d.next_attempt_at) if d.status == PENDING else None,
        "created_at": _iso(d.created_at),
        "finished_at": _iso(d.finished_at),
        "payload": d.payload,
    }


async def create_webhook(session: AsyncSession, payload: WebhookCreate, actor: str) -> dict[str, Any]:
    """Subscribes `url` to the event kinds; events recorded from now on are delivered."""
    hook = await WebhookRepository(session).add(
        Webhook(
            url=payload.url,
            events=list(payload.events),
            secret=payload.secret or None,
            format=payload.format,
            description=payload.description,
            created_by=actor,
        )
    )
    return webhook_view(hook, {})


async def _get(session: AsyncSession, webhook_id: int) -> Webhook:
    hook = await WebhookRepository(session).get(webhook_id)
    if hook is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return hook


async def get_webhook(session: AsyncSession, webhook_id: int) -> dict[str, Any]:
    hook = await _get(session, webhook_id)
    counts = await WebhookRepository(session).counts([hook.id])
    return webhook_view(hook, counts.get(hook.id, {}))


async def list_webhooks(session: AsyncSession, limit: int, offset: int) -> list[dict[str, Any]]:
    repo = WebhookRepository(session)
    hooks = await repo.list(limit, offset)
    counts = await repo.counts([h.id for h in hooks])
    return [webhook_view(h, counts.get(h.id, {})) for h in hooks]


async def delete_webhook(session: AsyncSession, webhook_id: int) -> None:
    """Unsubscribes: the subscription and its deliveries, pending ones included, are deleted."""
    await WebhookRepository(session).delete(await _get(session, webhook_id))


async def list_deliveries(
    session: AsyncSession, webhook_id: int, status: str | None, cursor: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of deliveries, newest first, and the cursor of the next page (None: last page)."""
    await _get(session, webhook_id)
    rows = await DeliveryRepository(session).page(webhook_id, status, cursor, limit)
    next_cursor = rows[-1].id if len(rows) == limit else None
    return [delivery_view(d) for d in rows], next_cursor
