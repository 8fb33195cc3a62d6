"""SQLAlchemy 2 models. Portable across PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Server(Base):
    __tablename__ = "servers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    host: Mapped[str] = mapped_column(String(253))
    transport: Mapped[str] = mapped_column(String(16))
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    ssh_user: Mapped[str] = mapped_column(String(32), default="root")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApplicationServer(Base):
    __tablename__ = "application_servers"

    application_id: Mapped[int] = mapped_column(
        ForeignKey("applications.id", ondelete="CASCADE"), primary_key=True
    )
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"), primary_key=True)


class Application(Base):
    __tablename__ = "applications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    port: Mapped[int] = mapped_column(Integer)
    #: Strategy blue_green: the second port of every server, where the new version starts beside the old.
    green_port: Mapped[int | None] = mapped_column(Integer, default=None)
    health_path: Mapped[str] = mapped_column(String(256), default="/health")
    current_version: Mapped[str] = mapped_column(String(128))
    deploy_command: Mapped[str] = mapped_column(Text)
    stop_command: Mapped[str | None] = mapped_column(Text, default=None)
    proxy: Mapped[dict[str, Any]] = mapped_column()
    #: Increases with every configuration pushed to the proxy.
    proxy_generation: Mapped[int] = mapped_column(Integer, default=0)
    #: The backends last pushed and verified: the engine skips a reload when nothing changed.
    proxy_applied: Mapped[list[Any]] = mapped_column(default=list)
    #: Default deployment settings: any subset of CanaryConfig (domain/defaults.py).
    deployment_defaults: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    server_links: Mapped[list[ApplicationServer]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by=ApplicationServer.server_id
    )

    @property
    def server_ids(self) -> list[int]:
        return [link.server_id for link in self.server_links]


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("application_id", "idempotency_key", name="uq_deployments_idempotency"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    #: Equal to application_id while the deployment is active, NULL once finished: the unique index makes
    #: "at most one active deployment per application" a database rule.
    active_application_id: Mapped[int | None] = mapped_column(Integer, unique=True, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    version: Mapped[str] = mapped_column(String(128))
    previous_version: Mapped[str] = mapped_column(String(128))
    strategy: Mapped[str] = mapped_column(String(16), default="canary")
    canary_config: Mapped[dict[str, Any]] = mapped_column()
    #: Where each setting of canary_config came from ("deployment", "application"; others: the default);
    #: None for deployments created before application defaults existed.
    config_sources: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16))
    canary_status: Mapped[str] = mapped_column(String(32), index=True)
    paused_from: Mapped[str | None] = mapped_column(String(32), default=None)
    current_canary_stage: Mapped[int] = mapped_column(Integer, default=0)
    canary_traffic_percentage: Mapped[float] = mapped_column(Float, default=0.0)
    canary_server_ids: Mapped[list[Any]] = mapped_column(default=list)
    stable_server_ids: Mapped[list[Any]] = mapped_column(default=list)
    #: Fact record: server id (as text) -> version it runs now, as far as canaryd changed it.
    server_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    canary_metrics_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    canary_stage_started_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Per-cohort traffic of the current stage, and stable traffic over the whole deployment.
    stage_stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    baseline_stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    log_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    consecutive_health_failures: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Webhook checks' progress (domain/plan.py CheckProgress): refusals at the current gate, etc.
    check_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Strategy blue_green: when all traffic went to the new (green) instances.
    switched_at: Mapped[datetime | None] = mapped_column(default=None)
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    #: Bumped by every change of state or stage; a tick only acts if it is unchanged since it looked.
    state_version: Mapped[int] = mapped_column(Integer, default=0)
    #: Identity of the one scheduled tick that may run next (also its member of the Redis tick queue).
    tick_token: Mapped[str | None] = mapped_column(String(80), default=None)
    next_tick_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(80), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class DeploymentEvent(Base):
    __tablename__ = "deployment_events"
    __table_args__ = (UniqueConstraint("deployment_id", "seq", name="uq_deployment_events_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # No index of its own: the unique (deployment_id, seq) index leads with it (migration 0008).
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    from_state: Mapped[str | None] = mapped_column(String(32), default=None)
    to_state: Mapped[str | None] = mapped_column(String(32), default=None)
    stage: Mapped[int | None] = mapped_column(Integer, default=None)
    traffic_percentage: Mapped[float | None] = mapped_column(Float, default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    actor: Mapped[str] = mapped_column(String(100), default="canaryd")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    #: sha256 of the token; the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    #: After this instant the token is refused (None: never expires).
    expires_at: Mapped[datetime | None] = mapped_column(default=None)


class Webhook(Base):
    """A notification subscription: deployment events of the listed kinds are POSTed to `url`."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    #: Event kinds (domain/notifications.py SUBSCRIBABLE), or ["*"] for all of them.
    events: Mapped[list[Any]] = mapped_column()
    #: Needed to sign each body, so stored as given; never returned by the API nor logged.
    secret: Mapped[str | None] = mapped_column(String(256), default=None)
    format: Mapped[str] = mapped_column(String(16), default="json")
    description: Mapped[str] = mapped_column(String(200), default="")
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one row per (subscription, event), inserted in the transaction that records the event.

    `payload` is what the subscriber gets (rendered in its format at each attempt, always to the same bytes);
    `key` is the idempotency key sent as `X-Canaryd-Delivery`, the same at every attempt. A delivery is
    pending until a 2xx answer (delivered) or its last attempt (failed); only the oldest pending delivery of a
    subscription is ever sent, so a subscriber gets its events in order.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(36), unique=True)
    event_kind: Mapped[str] = mapped_column(String(40))
    deployment_id: Mapped[int] = mapped_column(Integer)
    event_seq: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(80), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("ix_webhook_deliveries_queue", "status", "webhook_id", "id"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    )
