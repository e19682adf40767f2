"""A stand-in schema installer until `trellis_store.migrate` (numbered migrations under an
advisory lock) lands: applies migrations/0001_initial.sql once, remembered in a table.

INTEGRATION POINT: at merge, service.py imports `migrate` from trellis_store.migrate and this
module is deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK = 0x7472_6C73  # "trls": one installer at a time


async def migrate(pool: Any) -> int:
    """Apply 0001 if it is not applied yet; answer the schema version."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS trellis_store_bootstrap (version integer PRIMARY KEY)")
        applied = await conn.fetchval("SELECT max(version) FROM trellis_store_bootstrap")
        if applied is None:
            await conn.execute((MIGRATIONS / "0001_initial.sql").read_text())
            await conn.execute("INSERT INTO trellis_store_bootstrap (version) VALUES (1)")
            applied = 1
        return int(applied)
