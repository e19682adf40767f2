"""The state store service: a PostgreSQL pool, the schema, the projection of the bus into it,
and every `trellis.store.api.<op>` request answered (queue group `trellis-store`, so replicas share).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import asyncpg

from trellis_core import rpc
from trellis_core.bus import Bus
from trellis_core.errors import ConfigError
from trellis_core.logs import get_logger
from trellis_core.settings import Settings
from trellis_store.api import SUBJECT_PREFIX

# INTEGRATION POINT (merge with helper A): import `migrate` from trellis_store.migrate instead.
from trellis_store.bootstrap_schema import migrate
from trellis_store.context import ProjectionView, StoreContext
from trellis_store.handlers import UNAVAILABLE, handle
from trellis_store.sealing import Sealer

log = get_logger("store")

QUEUE = "trellis-store"
CONNECT_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


class NoProjection:
    """INTEGRATION POINT (merge with helper A): stands in for trellis_store.projection.Projection
    until it lands. Nothing is projected in this process, so there is nothing to wait for."""

    projected_events = 0
    projected_logs = 0

    async def wait_projected(self, seq: int, timeout: float) -> bool:  # noqa: ASYNC109
        return True

    async def events_last_seq(self) -> int:
        return 0


async def connect(settings: Settings, stop: asyncio.Event) -> tuple[Any, int] | None:
    """A pool on `database_url` and the schema migrated, retried while PostgreSQL is not up yet
    (the store waits for it rather than dying); None if `stop` came first."""
    attempt = 0
    while not stop.is_set():
        pool = None
        try:
            pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=1,
                max_size=settings.store_pool_size,
                command_timeout=60,
                timeout=settings.connect_timeout_seconds,
            )
            return pool, await migrate(pool)
        except UNAVAILABLE as exc:
            if pool is not None:
                pool.terminate()
            delay = CONNECT_RETRY_SECONDS[min(attempt, len(CONNECT_RETRY_SECONDS) - 1)]
            log.warning("store_database_unreachable", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


async def serve(bus: Bus, settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """Serve the store until `stop` is set; `ready` is set once every op is answered."""
    if not settings.database_url:
        raise ConfigError("TRELLIS_DATABASE_URL is not set: the state store keeps its data in PostgreSQL")
    sealer = Sealer(settings.seal_key)
    connected = await connect(settings, stop)
    if connected is None:
        return
    pool, schema_version = connected
    try:
        # INTEGRATION POINT (merge with helper A): build Projection(bus, pool, settings, sealer),
        # run `projection.run(stop, ready=...)` in a TaskGroup beside the rpc service, and set
        # `ready` only once the projection is ready too.
        projection: ProjectionView = NoProjection()
        ctx = StoreContext(pool=pool, sealer=sealer, projection=projection, schema_version=schema_version)
        subscription = await rpc.serve(bus.nc, SUBJECT_PREFIX + ">", functools.partial(handle, ctx), queue=QUEUE)
        log.info("store_started", schema_version=schema_version)
        try:
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
    finally:
        await asyncio.wait_for(pool.close(), 30)
        log.info("store_stopped")
