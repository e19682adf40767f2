"""Per-run credentials of the managed OpenTofu/Terraform state backend (`backendType: system`).

The compiler service mints one per run and environment and hands it to the agent sealed; the tool
presents it as the HTTP backend's basic-auth password (TF_HTTP_PASSWORD). A credential is
`tfs1.<base64url(claims JSON)>.<base64url(HMAC-SHA256(key, claims))>`, the key derived from
TRELLIS_CALLBACK_KEY for this use only (an approval callback token never passes as one). The
gateway checks the signature, the expiry and that the URL's tenant and environment are the
claims'; the state store then refuses it once its run has ended (the revocation).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import msgspec

from trellis_core import signed
from trellis_core.callbacks import key_bytes

PREFIX = "tfs1."
STATE_PATH = "/v1/tfstate/"
USERNAME = "trellis-run"  # the basic-auth user name the agent's tool sends (any is accepted)
_MAX_CREDENTIAL = 2048
_LABEL = b"trellis tfstate credential v1"


class StateClaims(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    environment: str
    run_id: str
    expires: int  # unix seconds

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, UTC)


def state_key(callback_key: str) -> bytes:
    """The signing key, derived from TRELLIS_CALLBACK_KEY (ConfigError when it is too short)."""
    return hmac.new(key_bytes(callback_key), _LABEL, hashlib.sha256).digest()


def mint(key: bytes, *, tenant: str, environment: str, run_id: str, expires_at: datetime) -> str:
    claims = StateClaims(tenant=tenant, environment=environment, run_id=run_id, expires=int(expires_at.timestamp()))
    return PREFIX + signed.sign(key, claims)


def verify(key: bytes, credential: str, now: datetime) -> StateClaims | str:
    """The credential's claims, or why it is refused (never which part of the signature was wrong)."""
    if len(credential) > _MAX_CREDENTIAL or not credential.isascii() or not credential.startswith(PREFIX):
        return "malformed state credential"
    claims = signed.open_signed(
        key, credential[len(PREFIX) :], StateClaims, what="state credential", max_length=_MAX_CREDENTIAL
    )
    if isinstance(claims, str):
        return claims
    if claims.expires <= now.timestamp():
        return f"state credential of run {claims.run_id} expired at {claims.expires_at.isoformat()}"
    return claims


def state_address(base_url: str, tenant: str, environment: str, resource: str) -> str:
    """The backend `address` of one resource's state (also its lock and unlock address)."""
    return f"{base_url.rstrip('/')}{STATE_PATH}{tenant}/{environment}/{resource}"
