"""Bearer tokens: who an `Authorization` header speaks for, asked of the store by the token's
SHA-256 (the store keeps no token in clear) and remembered for a few seconds so a burst of
requests costs one store round trip.

A token revoked in the store keeps working for at most `ttl` seconds here. Refusals are
remembered too, so a stream of made-up tokens does not cost a store query each: a token that is
not of the store's shape (`trls_` and 43 URL-safe characters) for minutes, as it can never become
valid; a well-formed unknown one for two seconds only (a token minted a moment ago was never
refused: it works at once).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from trellis_store.api import Principal, StoreError, TokenVerify
from trellis_store.client import StoreClient
from trellis_store.tokens import TOKEN_PREFIX

DEFAULT_TTL_SECONDS = 5.0
MAX_CACHED = 10_000
MAX_TOKEN_CHARS = 512  # a longer header is no token of ours: refused without asking the store
REFUSAL_TTL_SECONDS = 2.0  # a well-formed token the store does not know
MALFORMED_REFUSAL_TTL_SECONDS = 300.0  # a token not of the store's shape: it never will know it
MAX_REFUSALS_CACHED = 10_000
_WELL_FORMED = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")


def well_formed(token: str) -> bool:
    """Whether `token` has the shape of the store's tokens (`tokens.new_token`)."""
    return _WELL_FORMED.fullmatch(token) is not None


@dataclass
class TokenCache:
    """Principals by token SHA-256, each until its deadline; the oldest go first when full."""

    ttl: float = DEFAULT_TTL_SECONDS
    capacity: int = MAX_CACHED
    clock: Callable[[], float] = time.monotonic
    refusal_ttl: float = REFUSAL_TTL_SECONDS
    malformed_refusal_ttl: float = MALFORMED_REFUSAL_TTL_SECONDS
    refusal_capacity: int = MAX_REFUSALS_CACHED
    _entries: OrderedDict[str, tuple[float, Principal]] = field(default_factory=OrderedDict)
    _refused: OrderedDict[str, float] = field(default_factory=OrderedDict)  # digest -> until when

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

    def refused(self, digest: str) -> bool:
        """Whether the store refused this token recently (and the refusal still holds)."""
        deadline = self._refused.get(digest)
        if deadline is None:
            return False
        if self.clock() >= deadline:
            del self._refused[digest]
            return False
        return True

    def refuse(self, digest: str, *, malformed: bool) -> None:
        """Remember the store's `not_found` for the token (longer when it is not well-formed)."""
        self._refused[digest] = self.clock() + (self.malformed_refusal_ttl if malformed else self.refusal_ttl)
        self._refused.move_to_end(digest)
        while len(self._refused) > self.refusal_capacity:
            self._refused.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
        self._refused.clear()


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
    `not_found` for a token it does not know (remembered a while), `unavailable` when it cannot
    be asked (not remembered)."""
    digest = token_digest(token)
    who = cache.get(digest)
    if who is not None:
        return Verified(who, cached=True)
    if cache.refused(digest):
        return StoreError(code="not_found", message="the token is not known (refused a moment ago)")
    answer = await store.ask(TokenVerify(token_sha256=digest), Principal)
    if isinstance(answer, StoreError):
        if answer.code == "not_found":
            cache.refuse(digest, malformed=not well_formed(token))
        return answer
    cache.put(digest, answer)
    return Verified(answer, cached=False)
