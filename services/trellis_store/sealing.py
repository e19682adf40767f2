"""Sealing sensitive values at rest: AES-GCM under the store's `seal_key`, one fresh nonce a value.

A sealed value reads `v1:<nonce b64>:<ciphertext b64>`; the version prefix lets a later key
rotation or algorithm tell old values from new ones.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trellis_core.errors import ConfigError, TrellisError

PREFIX = "v1"
NONCE_BYTES = 12


class SealError(TrellisError):
    """A sealed value could not be opened: another key sealed it, or it was altered."""


def new_key() -> str:
    """A fresh 32-byte key, base64: what `TRELLIS_SEAL_KEY` holds."""
    return base64.b64encode(os.urandom(32)).decode()


class Sealer:
    def __init__(self, key_b64: str) -> None:
        if not key_b64:
            raise ConfigError(
                "TRELLIS_SEAL_KEY is not set: the store seals sensitive variables with it "
                "(base64 of 32 random bytes: `head -c 32 /dev/urandom | base64`)"
            )
        try:
            key = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("TRELLIS_SEAL_KEY: not valid base64") from None
        if len(key) != 32:
            raise ConfigError(f"TRELLIS_SEAL_KEY: must decode to 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, value: bytes | str) -> str:
        data = value.encode() if isinstance(value, str) else value
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, data, None)
        return f"{PREFIX}:{base64.b64encode(nonce).decode()}:{base64.b64encode(sealed).decode()}"

    def open(self, sealed: str) -> str:
        """The plain text of a value `seal` made; SealError if it is not one, or not this key's."""
        version, _, rest = sealed.partition(":")
        nonce_b64, _, data_b64 = rest.partition(":")
        if version != PREFIX or not nonce_b64 or not data_b64:
            raise SealError(f"not a sealed value (expected {PREFIX}:<nonce>:<ciphertext>)")
        try:
            plain = self._aead.decrypt(base64.b64decode(nonce_b64), base64.b64decode(data_b64), None)
        except (binascii.Error, ValueError, InvalidTag):
            raise SealError(
                "a sealed value does not open with this TRELLIS_SEAL_KEY (another key, or altered)"
            ) from None
        return plain.decode()
