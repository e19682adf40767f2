"""Identifiers: UUIDv7 event ids (time-ordered, so a stream sorts by creation) and run ids."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last = 0


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits. Without `now_ms`, ids
    made by this process increase strictly (RFC 9562 6.2, method 3: within one millisecond the
    next id is the last plus one), so ids sort by creation even when several share a millisecond."""
    global _last
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    if now_ms is None:
        with _lock:
            if value <= _last and (_last >> 80) == (value >> 80):
                value = _last + 1  # carries into rand_a at worst: version and variant stay
            _last = value
    return str(uuid.UUID(int=value))


def new_run_id() -> str:
    """A run id: a UUIDv7, so run ids sort by submission time."""
    return uuid7()
