"""Schema migrations on a real PostgreSQL: from empty, from the previous version, by several
replicas at once, and a changed applied file refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from trellis_store.migrate import MIGRATIONS_DIR, SCHEMA_VERSION, MigrationError, load, migrate


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


def _fixture_dir(root: Path, *files: tuple[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, sql in files:
        (root / name).write_text(sql)
    return root


FIRST = ("0001_things.sql", "CREATE TABLE things (id integer PRIMARY KEY);")
SECOND = ("0002_thing_names.sql", "ALTER TABLE things ADD COLUMN name text NOT NULL DEFAULT '';")


async def _ledger(pool: asyncpg.Pool) -> list[tuple[int, str]]:
    ledger = await pool.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
    return [(r["version"], r["name"]) for r in ledger]


async def test_from_empty_every_migration_is_applied_and_recorded(pool: asyncpg.Pool) -> None:
    assert SCHEMA_VERSION == len(load()) >= 1
    assert await migrate(pool) == SCHEMA_VERSION
    assert [v for v, _ in await _ledger(pool)] == list(range(1, SCHEMA_VERSION + 1))
    tables = {r["tablename"] for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"tenants", "environments", "runs", "activities", "events", "log_chunks", "approvals"} <= tables
    checksum = await pool.fetchval("SELECT checksum FROM schema_migrations WHERE version = 1")
    assert checksum == load()[0].checksum
    assert await migrate(pool) == SCHEMA_VERSION  # a second start applies nothing


async def test_from_the_previous_version_only_the_new_file_is_applied(pool: asyncpg.Pool, tmp_path: Path) -> None:
    v1 = _fixture_dir(tmp_path / "v1", FIRST)
    assert await migrate(pool, v1) == 1
    await pool.execute("INSERT INTO things (id) VALUES (7)")
    v2 = _fixture_dir(tmp_path / "v2", FIRST, SECOND)
    assert await migrate(pool, v2) == 2
    assert await _ledger(pool) == [(1, "things"), (2, "thing_names")]
    assert await pool.fetchval("SELECT name FROM things WHERE id = 7") == ""  # the data kept, the column added


async def test_three_replicas_migrating_at_once_apply_each_file_once(pool: asyncpg.Pool, tmp_path: Path) -> None:
    # A file that fails if run twice: the advisory lock must serialise the replicas.
    once = ("0002_counted.sql", "CREATE TABLE applied_once (n integer); INSERT INTO applied_once VALUES (1);")
    directory = _fixture_dir(tmp_path / "m", FIRST, once)
    versions = await asyncio.gather(*(migrate(pool, directory) for _ in range(3)))
    assert versions == [2, 2, 2]
    assert await pool.fetchval("SELECT count(*) FROM applied_once") == 1
    assert await _ledger(pool) == [(1, "things"), (2, "counted")]


async def test_a_changed_applied_file_is_refused_naming_it(pool: asyncpg.Pool, tmp_path: Path) -> None:
    directory = _fixture_dir(tmp_path / "m", FIRST)
    await migrate(pool, directory)
    (directory / FIRST[0]).write_text(FIRST[1] + "\n-- edited after release\n")
    with pytest.raises(MigrationError, match=r"0001_things\.sql was changed after it was applied"):
        await migrate(pool, directory)


async def test_a_failing_migration_is_rolled_back_and_named(pool: asyncpg.Pool, tmp_path: Path) -> None:
    bad = ("0002_broken.sql", "CREATE TABLE half_done (id integer); SELECT no_such_column FROM things;")
    directory = _fixture_dir(tmp_path / "m", FIRST, bad)
    with pytest.raises(MigrationError, match=r"0002_broken\.sql failed: UndefinedColumnError"):
        await migrate(pool, directory)
    assert await pool.fetchval("SELECT to_regclass('half_done')") is None  # its own transaction, undone
    assert await _ledger(pool) == [(1, "things")]


def test_misnamed_or_gapped_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match=r"Add_Index\.sql: name it NNNN_lowercase_words\.sql"):
        load(_fixture_dir(tmp_path / "a", FIRST, ("0002_Add_Index.sql", "")))
    with pytest.raises(MigrationError, match=r"without gaps: found \[1, 3\]"):
        load(_fixture_dir(tmp_path / "b", FIRST, ("0003_late.sql", "")))


def test_the_shipped_files_are_numbered_from_one() -> None:
    assert [m.version for m in load(MIGRATIONS_DIR)] == list(range(1, SCHEMA_VERSION + 1))


async def test_a_store_at_schema_one_upgrades_to_the_shipped_schema(pool: asyncpg.Pool, tmp_path: Path) -> None:
    first = load()[0]
    released = _fixture_dir(tmp_path / "released", (first.path.name, first.sql))
    assert await migrate(pool, released) == 1
    await pool.execute("INSERT INTO tenants (name) VALUES ('acme')")
    await pool.execute(
        "INSERT INTO environments (tenant, name, template_name, template_version) VALUES ('acme', 'web', 's', '1')"
    )
    assert await migrate(pool) == SCHEMA_VERSION >= 2
    assert await pool.fetchval("SELECT deploy_seq FROM environments WHERE name = 'web'") == 0
