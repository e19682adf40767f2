"""The leader lease: one scheduler replica works, the others wait to take over.

The lease is one key in a KV bucket holding the holder's id and an expiry; it is taken and
renewed with compare-and-set on the key's revision, so two replicas can never both hold it.
A holder steps down at once when its compare-and-set finds the key moved on (another replica,
or an operator, wrote or deleted it), and, when it cannot renew (the bus is unreachable or does
not answer), before the record it last wrote expires, by a fifth of the TTL: a standby takes an
expired lease, so the two never lead at once (clocks within that margin of each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from trellis_core.logs import get_logger

LEASE_KEY = "scheduler"
log = get_logger("scheduler.lease")


class LeaseRecord(msgspec.Struct, frozen=True):
    holder: str
    expires_at: float


class Lease:
    def __init__(self, kv: KeyValue, holder: str, ttl_seconds: float = 3.0, key: str = LEASE_KEY) -> None:
        self.kv = kv
        self.key = key
        self.holder = holder
        self.ttl = ttl_seconds
        self.revision: int | None = None
        # When the record last written expires: wall clock (what a standby compares) and monotonic.
        self.expires_at = 0.0
        self._valid_until = 0.0

    def _record(self) -> tuple[bytes, float, float]:
        """The record to write, and when it expires by the wall clock and by the monotonic one."""
        now, mono = time.time(), time.monotonic()
        return msgspec.json.encode(LeaseRecord(holder=self.holder, expires_at=now + self.ttl)), now, mono

    def _written(self, revision: int, wall: float, mono: float) -> None:
        self.revision = revision
        self.expires_at, self._valid_until = wall + self.ttl, mono + self.ttl

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        try:
            record, wall, mono = self._record()
            if entry is None or entry.value is None:
                self._written(await self.kv.create(self.key, record), wall, mono)
                return True
            current = msgspec.json.decode(entry.value, type=LeaseRecord)
            if current.holder != self.holder and current.expires_at > time.time():
                return False
            self._written(await self.kv.update(self.key, record, last=entry.revision), wall, mono)
            return True
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            return False  # another replica moved first
        except (msgspec.DecodeError, msgspec.ValidationError):
            await self.kv.delete(self.key)
            return False

    async def renew(self) -> Literal["renewed", "taken", "failed"]:
        """Extend the lease: `taken` when the key is no longer at our revision (it is not ours
        any more, whoever moved it), `failed` when the bus did not answer (try again)."""
        try:
            record, wall, mono = self._record()
            self._written(await self.kv.update(self.key, record, last=self.revision), wall, mono)
            return "renewed"
        except nats.js.errors.KeyWrongLastSequenceError:
            log.warning("lease_taken", holder=self.holder, key=self.key)
            return "taken"
        except (nats.js.errors.Error, nats.errors.Error) as exc:
            log.warning("lease_renew_failed", holder=self.holder, error=repr(exc))
            return "failed"

    async def release(self) -> None:
        try:
            await self.kv.delete(self.key, last=self.revision)
        except (nats.js.errors.Error, nats.errors.Error):
            pass

    async def keep(self, lost: asyncio.Event, stop: asyncio.Event) -> None:
        """Renew every third of the TTL until `stop`; set `lost` (and return) as soon as the key
        has moved on, or once the record last written is within a fifth of the TTL of expiring
        (a renewal that has not answered by then is given up: it may hang for its whole timeout)."""
        margin = self.ttl / 5
        while not stop.is_set():
            step_down_at = self._valid_until - margin
            try:
                wait = min(self.ttl / 3, step_down_at - time.monotonic())
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, wait))
                return
            except TimeoutError:
                pass
            outcome: Literal["renewed", "taken", "failed"] = "failed"
            if (left := step_down_at - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    outcome = await asyncio.wait_for(self.renew(), timeout=left)
            if outcome == "taken" or (outcome == "failed" and time.monotonic() >= step_down_at):
                log.warning("lease_lost", holder=self.holder, outcome=outcome)
                lost.set()
                return
