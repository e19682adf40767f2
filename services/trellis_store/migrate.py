"""Schema migrations: the numbered SQL files in `migrations/`, applied at start in order.

Why hand-rolled rather than alembic or yoyo: the store needs only "apply the files not yet
applied, once, in order" — a few dozen lines — and gets it with no extra dependency (alembic
brings SQLAlchemy, yoyo its own driver layer beside asyncpg), as plain SQL files a reviewer reads
as-is, and under a PostgreSQL advisory lock, so several store replicas starting at once apply each
file exactly once (the first takes the lock and applies; the others wait, then find nothing to do).

Each file runs in its own transaction together with its row in `schema_migrations` (version, name,
checksum, applied_at): it is applied entirely or not at all. A file already applied whose content
has changed since is refused, naming the file: a released migration is never edited, a new
numbered file is added instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from trellis_core.errors import TrellisError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant shared by every store replica: the key of the lock they migrate under.
ADVISORY_LOCK_KEY = 0x7472656C6C6973  # "trellis"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(TrellisError):
    """The migrations cannot be applied: a misnamed or changed file, or a failing statement."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file of `directory` by version; a stray or duplicated number is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path}: name it NNNN_lowercase_words.sql (e.g. 0002_add_index.sql)")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"migration files {found[version].path.name} and {path.name} share number {version}")
        found[version] = Migration(version, match.group(2), path, path.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration numbers in {directory} must run 1, 2, 3... without gaps: found {versions}")
    return [found[v] for v in versions]


SCHEMA_VERSION = len(load())  # the highest file number: what this code expects the schema at


async def migrate(pool: asyncpg.Pool, directory: Path = MIGRATIONS_DIR) -> int:
    """Apply every migration of `directory` not applied yet; return the schema version reached."""
    migrations = load(directory)
    async with pool.acquire() as conn:
        # A session lock, held across the per-file transactions and released however we leave.
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            await conn.execute(_LEDGER)
            ledger = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            applied = {r["version"]: r for r in ledger}
            _check_applied(migrations, applied, directory)
            for migration in migrations:
                if migration.version not in applied:
                    await _apply(conn, migration)
            return int(max([0, *applied, *(m.version for m in migrations)]))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)


def _check_applied(migrations: list[Migration], applied: dict[int, asyncpg.Record], directory: Path) -> None:
    by_version = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database is at schema version {max(applied)} but {directory} has no migration {version:04d} "
                f"({row['name']}): this store is older than the database, run a newer one"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {migration.path.name} was changed after it was applied (checksum {row['checksum'][:12]} "
                f"applied, {migration.checksum[:12]} now): restore it and add a new numbered file instead"
            )


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"migration {migration.path.name} failed: {type(exc).__name__}: {exc}") from exc
