"""Bearer tokens: who an `Authorization` header speaks for, asked of the store by the token's
SHA-256 (the store keeps no token in clear) and remembered for a few seconds so a burst of
requests costs one store round trip.

A token revoked in the store keeps working for at most `ttl` seconds here; refusals are not
cached, so a token minted a moment ago works at once.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from trellis_store.api import Principal, StoreError, TokenVerify
from trellis_store.client import StoreClient

DEFAULT_TTL_SECONDS = 5.0
MAX_CACHED = 10_000
MAX_TOKEN_CHARS = 512  # a longer header is no token of ours: refused without asking the store


@dataclass
class TokenCache:
    """Principals by token SHA-256, each until its deadline; the oldest go first when full."""

    ttl: float = DEFAULT_TTL_SECONDS
    capacity: int = MAX_CACHED
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[str, tuple[float, Principal]] = field(default_factory=OrderedDict)

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        deadline, who = entry
        if self.clock() >= deadline:
            del self._entries[digest]
            return None
        return who

    def put(self, digest: str, who: Principal) -> None:
        self._entries[digest] = (self.clock() + self.ttl, who)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None when there is none."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Verified:
    principal: Principal
    cached: bool


async def verify_token(store: StoreClient, cache: TokenCache, token: str) -> Verified | StoreError:
    """The token's principal (from the cache, else the store), or the store's refusal:
    `not_found` for a token it does not know, `unavailable` when it cannot be asked."""
    digest = token_digest(token)
    who = cache.get(digest)
    if who is not None:
        return Verified(who, cached=True)
    answer = await store.ask(TokenVerify(token_sha256=digest), Principal)
    if isinstance(answer, StoreError):
        return answer
    cache.put(digest, answer)
    return Verified(answer, cached=False)
