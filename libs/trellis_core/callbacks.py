"""Approval callback tokens: signed, expiring, single-use (the store remembers used ones).

The scheduler mints one URL per approval activity attempt (`$(approval.callback_url)$`); an
external system POSTs its decision there with no bearer token. A token is
`<base64url(claims JSON)>.<base64url(HMAC-SHA256(key, claims))>`; the claims name the tenant,
run, activity, attempt, expiry and a random token id that the store marks used on redemption.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import msgspec

from trellis_core import signed
from trellis_core.errors import ConfigError

CALLBACK_PATH = "/v1/callbacks/approvals/"
_MAX_TOKEN = 2048


class CallbackClaims(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    run_id: str
    activity_id: str
    attempt: int
    expires: int  # unix seconds
    token_id: str

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, UTC)


def key_bytes(key: str) -> bytes:
    """The HMAC key from its setting (TRELLIS_CALLBACK_KEY, any string of at least 32 characters)."""
    if len(key) < 32:
        raise ConfigError("TRELLIS_CALLBACK_KEY must be set to at least 32 characters (e.g. `openssl rand -hex 32`)")
    return key.encode()


def mint(key: bytes, *, tenant: str, run_id: str, activity_id: str, attempt: int, expires_at: datetime) -> str:
    claims = CallbackClaims(
        tenant=tenant,
        run_id=run_id,
        activity_id=activity_id,
        attempt=attempt,
        expires=int(expires_at.timestamp()),
        token_id=secrets.token_urlsafe(16),
    )
    return signed.sign(key, claims)


def callback_url(base_url: str, token: str) -> str:
    return base_url.rstrip("/") + CALLBACK_PATH + token


def verify(key: bytes, token: str, now: datetime) -> CallbackClaims | str:
    """The token's claims, or why it is refused (never which part of the signature was wrong)."""
    claims = signed.open_signed(key, token, CallbackClaims, what="callback token", max_length=_MAX_TOKEN)
    if isinstance(claims, str):
        return claims
    if claims.expires <= now.timestamp():
        return "callback token expired"
    return claims
