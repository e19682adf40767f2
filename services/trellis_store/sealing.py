"""Retired: the store's own at-rest sealing (`v1:<nonce>:<ct>`) became sealed tokens
(trellis_core.sealed); trellis_store.legacy_sealing converts what it left. Only `new_key` is
left here, for callers not moved to `trellis_core.sealed.new_master_key` yet."""

from __future__ import annotations

from trellis_core.sealed import new_master_key


def new_key() -> str:
    """A fresh master key (base64 of 32 bytes): `trellis_core.sealed.new_master_key`."""
    return new_master_key()
