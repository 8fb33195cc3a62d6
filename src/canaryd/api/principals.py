"""Who a bearer token is: the bootstrap token, or a stored token, remembered for a few seconds.

Looking a token up costs a database round trip per request (with the connection check-out, more than the
status read it guards), so each API process keeps what it found, by the token's hash, for `ttl` seconds
(CANARYD_TOKEN_CACHE_SECONDS, 2 s by default; 0 turns it off). What that costs:

- a token revoked through this process (`DELETE /api/v1/tokens/{id}`) is refused by it from the next
  request on: revoking forgets the token, and for `ttl` seconds a lookup that raced the revocation (read
  the row before it committed) may not remember it again;
- every other process, and every process after `canaryd token revoke` or a change in the database,
  refuses it at most `ttl` seconds after the revocation committed;
- an expired token is refused at once everywhere (the expiry is remembered with the token);
- unknown tokens are not remembered: a new token works at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from canaryd.runtime import Runtime
from canaryd.services import tokens
from canaryd.services.tokens import Principal, Verified

#: More distinct valid tokens than this in `ttl` seconds and the oldest are forgotten first.
MAX_ENTRIES = 10_000


class Principals:
    """Resolves bearer tokens for one API process."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._known: dict[str, tuple[float, Verified]] = {}  # hash -> (believed until, what the row said)
        self._revoked: dict[int, float] = {}  # token id -> not remembered again before this time

    async def resolve(self, rt: Runtime, token: str | None) -> Principal | None:
        """The token's principal; None for a missing, unknown, revoked or expired token."""
        if not token:
            return None
        digest = tokens.hash_token(token)
        if tokens.is_bootstrap(digest, rt.settings_bootstrap_hash):
            return Principal("bootstrap", "admin")
        now = self._clock()
        known = self._known.get(digest)
        if known is not None and known[0] > now and not known[1].expired():
            return known[1].principal
        async with rt.sessions() as session:
            verified = await tokens.verify(session, digest)
        if verified is None:
            self._known.pop(digest, None)
            return None
        self._remember(digest, verified, now)
        return verified.principal

    def forget(self, token_id: int) -> None:
        """Called before a revocation commits: the token is looked up afresh, and not remembered again until
        the revocation is surely visible (a lookup racing it may have read the row before it committed)."""
        now = self._clock()
        self._revoked = {i: until for i, until in self._revoked.items() if until > now}
        self._revoked[token_id] = now + self.ttl
        self._known = {d: k for d, k in self._known.items() if k[1].token_id != token_id}

    def _remember(self, digest: str, verified: Verified, now: float) -> None:
        if self.ttl <= 0 or self._revoked.get(verified.token_id, 0.0) > now:
            return
        self._known.pop(digest, None)  # re-inserted last: the oldest entries come first
        while len(self._known) >= MAX_ENTRIES:
            del self._known[next(iter(self._known))]
        self._known[digest] = (now + self.ttl, verified)
