"""The leader lease: one scheduler replica works, the others wait to take over.

The lease is one key in a KV bucket holding the holder's id and an expiry; it is taken and
renewed with compare-and-set on the key's revision, so two replicas can never both hold it.
A holder steps down at once when its compare-and-set finds the key moved on (another replica,
or an operator, wrote or deleted it), and when it cannot renew for most of the TTL (the bus is
unreachable); a standby takes an expired lease.
"""

from __future__ import annotations

import asyncio
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

    def _record(self) -> bytes:
        return msgspec.json.encode(LeaseRecord(holder=self.holder, expires_at=time.time() + self.ttl))

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        try:
            if entry is None or entry.value is None:
                self.revision = await self.kv.create(self.key, self._record())
                return True
            current = msgspec.json.decode(entry.value, type=LeaseRecord)
            if current.holder != self.holder and current.expires_at > time.time():
                return False
            self.revision = await self.kv.update(self.key, self._record(), last=entry.revision)
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
            self.revision = await self.kv.update(self.key, self._record(), last=self.revision)
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
        has moved on, or when renewal fails for most of the TTL."""
        last_ok = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.ttl / 3)
                return
            except TimeoutError:
                pass
            outcome = await self.renew()
            if outcome == "renewed":
                last_ok = time.monotonic()
            elif outcome == "taken" or time.monotonic() - last_ok >= self.ttl * 0.8:
                log.warning("lease_lost", holder=self.holder)
                lost.set()
                return
