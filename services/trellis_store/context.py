"""What every store op works with: the pool, the sealer, the projection's progress, and the
small helpers that turn rows into answers and refusals into StoreErrors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from trellis_store.api import ErrorCode, StoreError
from trellis_store.sealing import Sealer

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


@dataclass(frozen=True)
class StoreContext:
    pool: Any  # asyncpg.Pool (untyped library)
    sealer: Sealer
    projection: ProjectionView
    schema_version: int
    barrier_timeout: float = 10.0


def error(code: ErrorCode, message: str, path: str = "") -> StoreError:
    return StoreError(code=code, message=message, path=path)


def check_limit(limit: int, path: str = "limit") -> StoreError | None:
    if not 1 <= limit <= MAX_PAGE:
        return error("invalid", f"limit must be between 1 and {MAX_PAGE}, got {limit}", path)
    return None


def etag_of(revision: int) -> str:
    return f'"{revision}"'
