"""API tokens: generated with enough entropy that a plain SHA-256 is a safe way to store them."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.db.models import ApiToken
from canaryd.db.repositories import TokenRepository

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


async def create_token(session: AsyncSession, name: str, scope: str) -> str:
    """Stores the hash of a new token and returns the token itself (shown once, never stored)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    token = generate_token()
    await TokenRepository(session).add(ApiToken(name=name, token_hash=hash_token(token), scope=scope))
    return token


async def authenticate(session: AsyncSession, token: str, bootstrap_hash: str | None) -> Principal | None:
    digest = hash_token(token)
    if bootstrap_hash is not None and hmac.compare_digest(digest, bootstrap_hash):
        return Principal("bootstrap", "admin")
    row = await TokenRepository(session).by_hash(digest)
    return Principal(row.name, row.scope) if row else None
