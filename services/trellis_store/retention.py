"""Log retention: log chunks older than TRELLIS_STORE_LOGS_RETENTION_DAYS are deleted from PostgreSQL.

Deleted in slices of a bounded size, so a first pass over a large backlog never holds one long
transaction; run every `INTERVAL_SECONDS` by the projection (which also skips expired chunks a
replay would bring back).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import asyncpg

from trellis_core.logs import get_logger

INTERVAL_SECONDS = 3600.0
SLICE = 10_000

_DELETE = """
DELETE FROM log_chunks WHERE position IN (
    SELECT position FROM log_chunks WHERE occurred_at < now() - $1::interval ORDER BY occurred_at LIMIT $2
)
"""

log = get_logger("retention")


async def delete_expired_logs(pool: asyncpg.Pool, retention_days: float, *, slice_size: int = SLICE) -> int:
    """Delete every log chunk older than `retention_days`; how many were deleted."""
    total = 0
    while True:
        status = await pool.execute(_DELETE, timedelta(days=retention_days), slice_size)
        deleted = int(status.split()[-1])  # "DELETE <n>"
        total += deleted
        if deleted < slice_size:
            return total


async def run(
    pool: asyncpg.Pool, retention_days: float, stop: asyncio.Event, interval: float = INTERVAL_SECONDS
) -> None:
    """Delete expired log chunks now and every `interval` seconds until `stop` is set; a failed
    pass (PostgreSQL away) is logged and tried again at the next one."""
    while not stop.is_set():
        try:
            deleted = await delete_expired_logs(pool, retention_days)
            if deleted:
                log.info("log_chunks_expired", deleted=deleted, retention_days=retention_days)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("log_retention_failed", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
