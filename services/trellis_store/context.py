"""What every store op works with: the pool, the master keyring, the projection's progress, and the
small helpers that turn rows into answers and refusals into StoreErrors."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from trellis_core.sealed import MasterKeyring, TenantKeys
from trellis_store.api import ErrorCode, StoreError

# Tenant names are NATS subject tokens (`trellis.<tenant>.runs.requested`).
TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Environment names appear in subjects' payloads, URLs and a workflow's scope.
ENVIRONMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_PAGE = 1000


class ProjectionView(Protocol):
    """What the API needs of the projection (trellis_store.projection.Projection): how far it has
    written, and a way to wait until it has written everything published so far."""

    @property
    def projected_events(self) -> int: ...

    @property
    def projected_logs(self) -> int: ...

    async def wait_projected(self, seq: int, timeout: float) -> bool: ...  # noqa: ASYNC109

    async def events_last_seq(self) -> int: ...


class ActivityCache:
    """The activity list of recently read big runs, kept ENCODED (the JSON array the answer holds),
    each valid for one version: the sequence of the last event projected for its run (every
    activity change comes from a projected event, written in the same transaction). Reading a
    7,000-activity run again then costs one index probe and a copy of bytes: no decode, no encode.

    A version is only cached once everything up to it is known written (`complete`: the
    projection's in-order progress had reached it before the read's snapshot). Store replicas
    write their batches concurrently, so an earlier event of the run may still be committing when
    a later one is visible; that read is answered but not cached, or a stale list would be kept
    under a version that no longer changes."""

    def __init__(self, *, max_bytes: int = 128 * 1024**2, min_run_size: int = 500) -> None:
        self.max_bytes = max_bytes
        self.min_run_size = min_run_size
        self._runs: OrderedDict[tuple[str, str], tuple[int, bytes]] = OrderedDict()
        self._size = 0

    def get(self, tenant: str, run_id: str, version: int) -> bytes | None:
        hit = self._runs.get((tenant, run_id))
        if hit is None or hit[0] != version:
            return None
        self._runs.move_to_end((tenant, run_id))
        return hit[1]

    def put(self, tenant: str, run_id: str, version: int, encoded: bytes, *, count: int, complete: bool) -> None:
        if version <= 0 or not complete or count < self.min_run_size or len(encoded) > self.max_bytes:
            return  # nothing to check it against, maybe incomplete, cheap to read again, or too big
        old = self._runs.pop((tenant, run_id), None)
        if old is not None:
            self._size -= len(old[1])
        self._runs[(tenant, run_id)] = (version, encoded)
        self._size += len(encoded)
        while self._size > self.max_bytes and self._runs:
            _, (_, evicted) = self._runs.popitem(last=False)
            self._size -= len(evicted)


@dataclass(frozen=True, slots=True)
class Encoded:
    """An answer already encoded as JSON, in pieces: the reply frames them with one join, so a
    big answer (run.get of a 7,000-activity run, 2.5 MB) is copied once on its way out."""

    parts: tuple[bytes, ...]


@dataclass(frozen=True)
class StoreContext:
    pool: Any  # asyncpg.Pool (untyped library)
    keyring: MasterKeyring  # built once at start from TRELLIS_SEAL_KEY and TRELLIS_SEAL_KEYS_RETIRED
    projection: ProjectionView
    schema_version: int
    barrier_timeout: float = 5.0  # under StoreClient's default 10 s: the caller hears why, not a timeout
    activities: ActivityCache = field(default_factory=ActivityCache)

    def keys(self, tenant: str) -> TenantKeys:
        """The tenant's data keys (derived on each call: HKDF costs microseconds)."""
        return self.keyring.for_tenant(tenant)


def error(code: ErrorCode, message: str, path: str = "") -> StoreError:
    return StoreError(code=code, message=message, path=path)


def check_limit(limit: int, path: str = "limit") -> StoreError | None:
    if not 1 <= limit <= MAX_PAGE:
        return error("invalid", f"limit must be between 1 and {MAX_PAGE}, got {limit}", path)
    return None


def etag_of(revision: int) -> str:
    return f'"{revision}"'
