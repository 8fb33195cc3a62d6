"""Request and response bodies of /api/v1/webhooks. The secret goes in and never comes out."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from canaryd.domain.config import StrictModel
from canaryd.domain.notifications import ALL_KINDS, SUBSCRIBABLE, kind_problems

DeliveryStatus = Literal["pending", "delivered", "failed"]


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("url must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("url must name a host")
    if any(ord(c) < 33 for c in url):
        raise ValueError("url must not contain spaces or control characters")
    return url


def _kind(kind: str) -> str:
    problems = kind_problems([kind])
    if problems:
        raise ValueError(problems[0][1])
    return kind


def _unique(kinds: list[str]) -> list[str]:
    if len(set(kinds)) != len(kinds):
        raise ValueError("events must not repeat a kind")
    return kinds


EventKindName = Annotated[str, Field(max_length=40), AfterValidator(_kind)]


class WebhookCreate(StrictModel):
    """A subscription: events of these kinds are POSTed to `url`, signed when a secret is set."""

    url: Annotated[str, Field(min_length=8, max_length=2048), AfterValidator(_http_url)] = Field(
        description="where to POST each event: an http:// or https:// URL (e.g. a Slack incoming webhook)"
    )
    events: Annotated[list[EventKindName], AfterValidator(_unique)] = Field(
        min_length=1,
        max_length=len(SUBSCRIBABLE) + 1,
        description=f"event kinds to deliver, or [{ALL_KINDS!r}] for all: " + ", ".join(SUBSCRIBABLE),
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="signs each body: header `X-Canaryd-Signature: sha256=<hex HMAC-SHA256(secret, body)>`; "
        "stored to sign, never shown again",
    )
    format: Literal["json", "slack"] = Field(
        default="json", description="`json` (canaryd's payload) or `slack` (an incoming-webhook message)"
    )
    description: str = Field(default="", max_length=200, description="a note for people")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "url": "https://hooks.example.com/canaryd",
                "events": ["stage_advanced", "rolled_back", "completed", "failed"],
                "secret": "a-long-random-shared-secret",
                "format": "json",
            }
        }
    )


class DeliveryCounts(BaseModel):
    pending: int = 0
    delivered: int = 0
    failed: int = 0


class WebhookOut(BaseModel):
    """A subscription as shown: never its secret, only whether it has one."""

    id: int
    url: str = Field(max_length=2048)
    events: list[str]
    format: Literal["json", "slack"]
    description: str
    secret_set: bool = Field(description="bodies are signed (the secret itself is never shown)")
    created_by: str
    created_at: str | None
    deliveries: DeliveryCounts

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 1,
                "url": "https://hooks.example.com/canaryd",
                "events": ["stage_advanced", "rolled_back", "completed", "failed"],
                "format": "json",
                "description": "",
                "secret_set": True,
                "created_by": "token:admin",
                "created_at": "2026-11-29T18:00:00+00:00",
                "deliveries": {"pending": 0, "delivered": 12, "failed": 0},
            }
        }
    )


class DeliveryOut(BaseModel):
    """One delivery of one event to one subscription, and how its attempts went."""

    id: int
    webhook_id: int
    key: str = Field(description="the idempotency key, sent as `X-Canaryd-Delivery` at every attempt")
    event_kind: str
    deployment_id: int
    event_seq: int
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None = Field(description="the HTTP status of the last attempt (null: no answer)")
    last_error: str | None
    next_attempt_at: str | None = Field(description="when it is tried next (null once finished)")
    created_at: str | None
    finished_at: str | None
    payload: dict[str, Any] = Field(
        description="the `json` payload (Slack subscriptions get it as a message)"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 31,
                "webhook_id": 1,
                "key": "0f8e7a0c-3b7e-4a52-9a55-0d3c1a5e2f10",
                "event_kind": "rolled_back",
                "deployment_id": 7,
                "event_seq": 14,
                "status": "pending",
                "attempts": 2,
                "last_status_code": 500,
                "last_error": "HTTP 500: internal error",
                "next_attempt_at": "2026-11-29T18:07:04+00:00",
                "created_at": "2026-11-29T18:07:00+00:00",
                "finished_at": None,
                "payload": {"schema": 1, "event": {"kind": "rolled_back"}},
            }
        }
    )
