"""Retry backoff: exponential, capped, with jitter derived from the attempt's identity (no randomness)."""

from __future__ import annotations

import hashlib
import math

from trellis_core.workflow import RetryPolicy


def jitter_fraction(key: str) -> float:
    """A number in [0, 1) that is the same every time for the same key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def backoff_seconds(policy: RetryPolicy, failed_attempt: int, key: str) -> float:
    """Delay before the attempt after `failed_attempt` (1-based): "equal jitter" — half the
    exponential step is fixed, half is spread by the key so retries of many activities don't align."""
    exponent = max(failed_attempt - 1, 0)
    try:
        grown = policy.initial_backoff_seconds * policy.multiplier**exponent
    except OverflowError:  # float ** raises where float * gives inf: past any cap anyway
        grown = math.inf if policy.initial_backoff_seconds > 0 else 0.0
    step = min(grown, policy.max_backoff_seconds)
    step = max(step, 0.0)
    return step / 2 + step / 2 * jitter_fraction(key)
