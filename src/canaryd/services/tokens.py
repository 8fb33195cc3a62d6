"""API tokens: generated with enough entropy that a plain SHA-256 is a safe way to store them.

A request's token is looked up by its hash (one indexed query); the API keeps what it found for a few
seconds (api/principals.py), so a revoked token is refused by every replica within
CANARYD_TOKEN_CACHE_SECONDS, and an expired one at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.db.models import ApiToken, utcnow
from canaryd.db.repositories import TokenRepository
from canaryd.services.errors import Conflict, NotFound

#: Each scope includes the ones before it.
SCOPES = ("read", "deploy", "operate", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    return "cdt_" + secrets.token_urlsafe(32)


async def create_token(session: AsyncSession, name: str, scope: str, *, expires_in: int | None = None) -> str:
    """Stores the hash of a new token and returns the token itself (shown once, never stored)."""
    token, _ = await create_token_row(session, name, scope, expires_in=expires_in)
    return token


async def create_token_row(
    session: AsyncSession, name: str, scope: str, *, expires_in: int | None = None
) -> tuple[str, ApiToken]:
    """Like create_token, also returning the stored row (for its id and expiry)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    token = generate_token()
    now = utcnow()
    expires_at = now + timedelta(seconds=expires_in) if expires_in is not None else None
    row = await TokenRepository(session).add(
        ApiToken(name=name, token_hash=hash_token(token), scope=scope, created_at=now, expires_at=expires_at)
    )
    return token, row


@dataclass(frozen=True, slots=True)
class Verified:
    """What a token's row says: who it is, and until when it may be believed."""

    principal: Principal
    token_id: int
    expires_at: datetime | None

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= utcnow()


def is_bootstrap(digest: str, bootstrap_hash: str | None) -> bool:
    return bootstrap_hash is not None and hmac.compare_digest(digest, bootstrap_hash)


async def verify(session: AsyncSession, digest: str) -> Verified | None:
    """The token stored with this hash, if it is neither revoked nor expired."""
    row = await TokenRepository(session).by_hash(digest)
    if row is None:
        return None
    verified = Verified(Principal(row.name, row.scope), row.id, row.expires_at)
    return None if verified.expired() else verified


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def token_view(row: ApiToken) -> dict[str, Any]:
    """A token as listed: never the token or its hash."""
    return {
        "id": row.id,
        "name": row.name,
        "scope": row.scope,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "revoked_at": _iso(row.revoked_at),
        "active": row.revoked_at is None and (row.expires_at is None or row.expires_at > utcnow()),
    }


async def list_tokens(session: AsyncSession, *, include_revoked: bool = False) -> list[dict[str, Any]]:
    rows: Sequence[ApiToken] = await TokenRepository(session).list(include_revoked)
    return [token_view(r) for r in rows]


async def revoke_token(session: AsyncSession, token_id: int) -> dict[str, Any]:
    """Marks a token revoked (kept for the record); 409 if it already was."""
    row = await TokenRepository(session).get(token_id)
    if row is None:
        raise NotFound(f"token {token_id} not found")
    if row.revoked_at is not None:
        raise Conflict(f"token {token_id} was already revoked at {row.revoked_at.isoformat()}")
    row.revoked_at = utcnow()
    return token_view(row)
