"""Who a bearer token is: the bootstrap token, or a stored token, remembered for a few seconds.

Looking a token up costs a database round trip per request (with the connection check-out, more than the
status read it guards), so each API process keeps what it found, by the token's hash, for `ttl` seconds
(CANARYD_TOKEN_CACHE_SECONDS, 2 s by default; 0 turns it off). What that costs:

- a token revoked through this process (`DELETE /api/v1/tokens/{id}`) is refused by it from the next
  request on: revoking forgets the token, and for `ttl` seconds a lookup that raced the revocation (read
  the row before it committed) may not remember it again;
- every other process, and every process after `canaryd token revoke` or a change in the database,
  refuses it at most `ttl` seconds after the revocation committed (plus the time the lookup that read the
  row before it took to come back: milliseconds, unless the process is overloaded);
- an expired token is refused at once everywhere (the expiry is remembered with the token);
- unknown tokens are not remembered: a new token works at once.
"""

from __future__ import annotations

import asyncio
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
        self._lookups: dict[str, asyncio.Future[Verified | None]] = {}  # hash -> the lookup under way

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
        lookup = self._lookups.get(digest)
        if lookup is None:  # one lookup at a time per token: requests arriving meanwhile wait for its answer
            lookup = asyncio.ensure_future(self._verify(rt, digest))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._looked_up(digest, done))
        verified = await asyncio.shield(lookup)  # a request given up does not cancel the others' lookup
        if verified is None:
            self._known.pop(digest, None)
            return None
        # Counted from the answer, not the question: an overloaded process can take longer than `ttl` to
        # get its answer back, and would then never believe anything for the requests queued behind it.
        self._remember(digest, verified, self._clock())
        return verified.principal

    @staticmethod
    async def _verify(rt: Runtime, digest: str) -> Verified | None:
        async with rt.sessions() as session:
            return await tokens.verify(session, digest)

    def _looked_up(self, digest: str, done: asyncio.Future[Verified | None]) -> None:
        if self._lookups.get(digest) is done:
            del self._lookups[digest]
        if not done.cancelled():
            done.exception()  # its waiters have it; if all of them gave up, it is not an unhandled error

    def forget(self, token_id: int) -> None:
        """Called before a revocation commits: the token is looked up afresh, and not remembered again until
        the revocation is surely visible (a lookup racing it may have read the row before it committed)."""
        now = self._clock()
        self._revoked = {i: until for i, until in self._revoked.items() if until > now}
        self._revoked[token_id] = now + self.ttl
        self._known = {d: k for d, k in self._known.items() if k[1].token_id != token_id}
        self._lookups.clear()  # requests from now on do not wait for an answer read before the revocation

    def _remember(self, digest: str, verified: Verified, now: float) -> None:
        if self.ttl <= 0 or self._revoked.get(verified.token_id, 0.0) > now:
            return
        self._known.pop(digest, None)  # re-inserted last: the oldest entries come first
        while len(self._known) >= MAX_ENTRIES:
            del self._known[next(iter(self._known))]
        self._known[digest] = (now + self.ttl, verified)
