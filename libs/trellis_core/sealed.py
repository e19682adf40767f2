"""Sealed values: how a sensitive value travels and rests between where it enters and the agent.

A sensitive value (a variable declared `sensitive`, a context's sensitive entry, an output the
tool marked sensitive) is sealed where it enters Trellis: by the CLI or the gateway (asking the
state store), by the compiler (contexts, defaults, a request that came in clear) or by the agent
(outputs). What travels from then on is a *sealed token*, a plain ASCII string:

    [[trellis-sealed:v1:<kid>:<base64url(nonce || AES-GCM ciphertext+tag)>]]

Tokens are opaque strings to everything in between: the compiler renders them into other strings
(`postgres://app:$(var.password)$@db` carries the token inside the URL), the scheduler renders
late expressions over them, events, snapshots, dead letters and rows keep them. Only the agent
that runs the activity holds its tenant's keys; it replaces each token by its plain text just
before the executor runs, and masks every opened value (and its encoded forms) in what it sends
back. An expression can pass a sensitive value on, not inspect it: a filter or a comparison sees
the token, never the secret.

Keys: one data key per tenant, derived with HKDF-SHA256 from a control-plane master key
(`TRELLIS_SEAL_KEY`) and the tenant's name, so a tenant's key opens nothing of another tenant's,
and the associated data binds each token to its tenant and key id as well. The key id `kid` is
the first 8 hex digits of the master key's SHA-256: a rotation adds a new master key
(`TRELLIS_SEAL_KEY`) and keeps the old ones as retired (`TRELLIS_SEAL_KEYS_RETIRED`) until
`trellis keys rotate` has re-sealed every stored value and the streams have aged out the rest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trellis_core.errors import ConfigError, TrellisError

VERSION = "v1"
MASK = "********"
NONCE_BYTES = 12
_HKDF_SALT = b"trellis tenant data key v1"
# kid: 8 hex digits. payload: base64url without padding (nonce 12 + tag 16 bytes at least).
# Every token starts so (JSON-encoded too: no character of it is escaped).
TOKEN_MARK = b"[[trellis-sealed:"
TOKEN_PATTERN = re.compile(r"\[\[trellis-sealed:v1:(?P<kid>[0-9a-f]{8}):(?P<payload>[A-Za-z0-9_-]{38,})\]\]")
# The shortest encoded form worth masking: shorter ones match ordinary text too often.
MIN_ENCODED_FORM = 6


class SealError(TrellisError):
    """A token could not be sealed or opened: unknown key id, another tenant's, or altered."""


def new_master_key() -> str:
    """A fresh 32-byte master key, base64: what `TRELLIS_SEAL_KEY` holds."""
    return base64.b64encode(os.urandom(32)).decode()


def _decode_master(key_b64: str, what: str) -> bytes:
    try:
        key = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: not valid base64") from None
    if len(key) != 32:
        raise ConfigError(f"{what}: must decode to 32 bytes, got {len(key)}")
    return key


def key_id(master: bytes) -> str:
    return hashlib.sha256(master).hexdigest()[:8]


def _aad(tenant: str, kid: str) -> bytes:
    return f"trellis-sealed:{VERSION}:{tenant}:{kid}".encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TenantKeyMaterial(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's data keys as the control plane hands them to that tenant's agents (the answer
    on `trellis.<tenant>.keys.get`): key id -> base64 of 32 bytes; `current` seals."""

    tenant: str
    current: str
    keys: dict[str, str]


class KeysAnswer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The reply on `trellis.<tenant>.keys.get` (the request's body is ignored: the subject names
    the tenant, and nats-server lets only that tenant's agents publish on it): the material, or
    why not."""

    material: TenantKeyMaterial | None = None
    error: str = ""


class TenantKeys:
    """One tenant's data keys: seal with the current one, open with any of them."""

    def __init__(self, tenant: str, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise ConfigError(f"tenant {tenant!r}: current key {current!r} is not among its keys")
        self.tenant = tenant
        self.current = current
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self._raw = dict(keys)

    @classmethod
    def from_material(cls, material: TenantKeyMaterial) -> TenantKeys:
        try:
            keys = {kid: base64.b64decode(k, validate=True) for kid, k in material.keys.items()}
        except (binascii.Error, ValueError):
            raise SealError(f"tenant {material.tenant!r}: a key handed out is not base64") from None
        return cls(material.tenant, keys, material.current)

    def material(self) -> TenantKeyMaterial:
        keys = {kid: base64.b64encode(k).decode() for kid, k in self._raw.items()}
        return TenantKeyMaterial(tenant=self.tenant, current=self.current, keys=keys)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._aead)

    def seal(self, plain: str) -> str:
        """A token holding `plain` under the current key; a token given stays as it is."""
        if is_token(plain):
            return plain
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current].encrypt(nonce, plain.encode(), _aad(self.tenant, self.current))
        return f"[[trellis-sealed:{VERSION}:{self.current}:{_b64url(nonce + sealed)}]]"

    def open(self, token: str) -> str:
        """The plain text of one whole token; SealError says why it does not open."""
        match = TOKEN_PATTERN.fullmatch(token)
        if match is None:
            raise SealError("not a sealed token ([[trellis-sealed:v1:<kid>:<payload>]])")
        return self._open_match(match)

    def _open_match(self, match: re.Match[str]) -> str:
        kid = match["kid"]
        aead = self._aead.get(kid)
        if aead is None:
            raise SealError(
                f"a sealed value of tenant {self.tenant!r} was sealed with key {kid}, which this holder does "
                f"not have (it has {', '.join(sorted(self._aead)) or 'none'}): a retired key was dropped too "
                "early, or the value belongs to another installation"
            )
        try:
            blob = _unb64url(match["payload"])
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(self.tenant, kid)).decode()
        except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
            raise SealError(
                f"a sealed value with key {kid} does not open for tenant {self.tenant!r}: another tenant's, or altered"
            ) from None

    def open_text(self, text: str, opened: set[str] | None = None) -> str:
        """`text` with every token in it replaced by its plain text; each plain text is added
        to `opened` (what the agent masks from then on)."""
        if "[[trellis-sealed:" not in text:
            return text

        def one(match: re.Match[str]) -> str:
            plain = self._open_match(match)
            if opened is not None:
                opened.add(plain)
            return plain

        return TOKEN_PATTERN.sub(one, text)

    def open_value(self, value: Any, opened: set[str] | None = None) -> Any:
        """`value` (JSON-like: dicts, lists, tuples, strings) with every token in it opened;
        keys of dicts too. Other values are returned as they are."""
        if isinstance(value, str):
            return self.open_text(value, opened)
        if isinstance(value, Mapping):
            return {self.open_text(str(k), opened): self.open_value(v, opened) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.open_value(v, opened) for v in value)
        return value

    def reseal_text(self, text: str) -> str:
        """`text` with every token not under the current key sealed again under it (rotation)."""

        def one(match: re.Match[str]) -> str:
            if match["kid"] == self.current:
                return match[0]
            return self.seal(self._open_match(match))

        return TOKEN_PATTERN.sub(one, text)


class MasterKeyring:
    """The control plane's master keys: the current one and the retired ones still opening."""

    def __init__(self, current_b64: str, retired_b64: Iterable[str] = ()) -> None:
        if not current_b64:
            raise ConfigError(
                "TRELLIS_SEAL_KEY is not set: sensitive values are sealed under keys derived from it "
                "(base64 of 32 random bytes: `head -c 32 /dev/urandom | base64`)"
            )
        current = _decode_master(current_b64, "TRELLIS_SEAL_KEY")
        self._masters = {key_id(current): current}
        for n, text in enumerate(r for r in retired_b64 if r.strip()):
            key = _decode_master(text, f"TRELLIS_SEAL_KEYS_RETIRED (key {n + 1})")
            self._masters.setdefault(key_id(key), key)
        self.current = key_id(current)

    @classmethod
    def from_settings(cls, settings: Any) -> MasterKeyring:
        """From `Settings.seal_key` and `Settings.seal_keys_retired` (comma-separated)."""
        retired = [k for k in str(getattr(settings, "seal_keys_retired", "")).split(",") if k.strip()]
        return cls(settings.seal_key, retired)

    @property
    def kids(self) -> tuple[str, ...]:
        return (self.current, *(k for k in self._masters if k != self.current))

    def for_tenant(self, tenant: str) -> TenantKeys:
        keys = {
            kid: HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=tenant.encode()).derive(master)
            for kid, master in self._masters.items()
        }
        return TenantKeys(tenant, keys, self.current)


# ---- finding and masking tokens, for those who hold no key ------------------------------------


def is_token(text: str) -> bool:
    return TOKEN_PATTERN.fullmatch(text) is not None


def contains_token(value: Any) -> bool:
    """Whether a token appears anywhere in `value` (JSON-like), keys included."""
    if isinstance(value, str):
        return "[[trellis-sealed:" in value and TOKEN_PATTERN.search(value) is not None
    if isinstance(value, Mapping):
        return any(contains_token(k) or contains_token(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(contains_token(v) for v in value)
    return False


def token_kids(value: Any) -> set[str]:
    """The key ids of every token in `value` (JSON-like)."""
    found: set[str] = set()
    if isinstance(value, str):
        found.update(m["kid"] for m in TOKEN_PATTERN.finditer(value))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            found |= token_kids(k) | token_kids(v)
    elif isinstance(value, list | tuple):
        for v in value:
            found |= token_kids(v)
    return found


def mask_tokens(value: Any, mask: str = MASK) -> Any:
    """`value` with every token replaced by `mask`: how answers and displays show them."""
    if isinstance(value, str):
        return TOKEN_PATTERN.sub(mask, value) if "[[trellis-sealed:" in value else value
    if isinstance(value, Mapping):
        return {mask_tokens(k, mask): mask_tokens(v, mask) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_tokens(v, mask) for v in value)
    return value


def encoded_forms(secret: str) -> set[str]:
    """The forms a secret is commonly found in, besides itself: JSON-escaped, URL-encoded
    (`quote` and `quote_plus`), and base64 (standard and URL-safe, as a whole and as it appears
    at each of the three byte alignments inside a longer base64 text). Forms shorter than
    MIN_ENCODED_FORM are left out; the secret itself is always in."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms |= {urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret, safe="")}
    raw = secret.encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        forms |= {whole, whole.rstrip("=")}
        for pad in range(3):
            text = encode(b"\0" * pad + raw).decode()
            start = -(-pad * 8 // 6)  # the first character no padding byte touches
            end = (pad + len(raw)) * 8 // 6  # the last whole character of the secret's bits
            forms.add(text[start:end])
    return {f for f in forms if f == secret or len(f) >= MIN_ENCODED_FORM}


__all__ = [
    "MASK",
    "TOKEN_PATTERN",
    "KeysAnswer",
    "MasterKeyring",
    "SealError",
    "TenantKeyMaterial",
    "TenantKeys",
    "contains_token",
    "encoded_forms",
    "is_token",
    "key_id",
    "mask_tokens",
    "new_master_key",
    "token_kids",
]
