"""HTTP routes of /api/v1/webhooks: notification subscriptions and their deliveries (admin scope; a URL
may hold a credential, as Slack's do). Each validates, calls one service function and returns."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from canaryd.api.deps import AdminAccess, SessionDep
from canaryd.api.routes import Limit, Offset, errors
from canaryd.services import webhooks
from canaryd.services.webhook_schemas import DeliveryOut, DeliveryStatus, WebhookCreate, WebhookOut

router = APIRouter(prefix="/api/v1")
WebhookId = Annotated[int, Path(description="the subscription's id", ge=1, le=2**31 - 1)]


@router.post(
    "/webhooks",
    status_code=status.HTTP_201_CREATED,
    tags=["webhooks"],
    summary="Subscribe to deployment events",
    response_model=WebhookOut,
    responses=errors(),
)
async def create_webhook(
    payload: WebhookCreate, session: SessionDep, principal: AdminAccess
) -> dict[str, Any]:
    """Subscribes a URL to event kinds (admin scope). Every event of those kinds recorded from now on is
    POSTed to it, in order, at least once, signed with `X-Canaryd-Signature` when a secret is set; see
    docs/notifications.md. The secret is never shown again (`secret_set`)."""
    return await webhooks.create_webhook(session, payload, f"token:{principal.name}")


@router.get(
    "/webhooks",
    tags=["webhooks"],
    summary="List subscriptions",
    response_model=list[WebhookOut],
    responses=errors(),
)
async def list_webhooks(
    session: SessionDep, _: AdminAccess, limit: Limit = 100, offset: Offset = 0
) -> list[dict[str, Any]]:
    """Every subscription, oldest first, with its deliveries counted by status (admin scope)."""
    return await webhooks.list_webhooks(session, limit, offset)


@router.get(
    "/webhooks/{webhook_id}",
    tags=["webhooks"],
    summary="Get a subscription",
    response_model=WebhookOut,
    responses=errors(404),
)
async def get_webhook(webhook_id: WebhookId, session: SessionDep, _: AdminAccess) -> dict[str, Any]:
    """One subscription with its deliveries counted by status (admin scope)."""
    return await webhooks.get_webhook(session, webhook_id)


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["webhooks"],
    summary="Unsubscribe",
    response_class=Response,
    responses=errors(404),
)
async def delete_webhook(webhook_id: WebhookId, session: SessionDep, _: AdminAccess) -> Response:
    """Deletes a subscription and its deliveries, pending ones included (admin scope)."""
    await webhooks.delete_webhook(session, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    tags=["webhooks"],
    summary="A subscription's deliveries",
    response_model=list[DeliveryOut],
    responses=errors(404),
)
async def list_webhook_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    _: AdminAccess,
    response: Response,
    limit: Limit = 50,
    status: Annotated[DeliveryStatus | None, Query(description="only deliveries in this state")] = None,
    cursor: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="X-Next-Cursor of a page")] = None,
) -> list[dict[str, Any]]:
    """Deliveries newest first (admin scope): pending (with the next attempt's time), delivered or failed,
    with their attempts and the last answer or error. Pages: pass the `X-Next-Cursor` header of an answer
    as `cursor` (absent on the last page)."""
    rows, next_cursor = await webhooks.list_deliveries(session, webhook_id, status, cursor, limit)
    if next_cursor is not None:
        response.headers["X-Next-Cursor"] = str(next_cursor)
    return rows
