"""Signed claims: `<base64url(claims JSON)>.<base64url(HMAC-SHA256(key, claims JSON))>`.

What approval callback tokens and managed-state credentials are made of; each use keeps its own
key, claims Struct and wording, and this module only the encoding and the signature check (in
constant time, never saying which part of a signature was wrong).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TypeVar

import msgspec

C = TypeVar("C", bound=msgspec.Struct)

_encode = msgspec.json.Encoder().encode


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, body: str) -> str:
    return b64url(hmac.new(key, body.encode(), hashlib.sha256).digest())


def sign(key: bytes, claims: msgspec.Struct) -> str:
    """`body.signature` of `claims`."""
    body = b64url(_encode(claims))
    return f"{body}.{_signature(key, body)}"


def open_signed(key: bytes, token: str, claims: type[C], *, what: str, max_length: int = 2048) -> C | str:
    """The claims of `token`, or why it is refused: "malformed <what>" or "<what> signature does
    not match" (expiry and scope are the caller's to check)."""
    if len(token) > max_length or token.count(".") != 1 or not token.isascii():
        return f"malformed {what}"
    body, signature = token.split(".")
    if not hmac.compare_digest(_signature(key, body).encode(), signature.encode()):
        return f"{what} signature does not match"
    try:
        return msgspec.json.decode(unb64url(body), type=claims)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return f"malformed {what}"
