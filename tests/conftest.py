"""Session fixtures: a real nats-server and a real PostgreSQL on free ports in temp dirs, and the test data dirs.

`database_url` gives each test an empty database of its own on the session's PostgreSQL."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNats, EmbeddedPostgres
from trellis_core.logs import configure
from trellis_core.settings import Settings

QUIET_LOGS = Settings.from_env({}, log_format="json", log_level="warning")


@pytest.fixture(scope="session", autouse=True)
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Nothing a test runs, in this process or a child, writes to the real per-user data dir:
    TRELLIS_DATA_DIR and XDG_DATA_HOME (the default's root) point into a temp dir."""
    root = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRELLIS_DATA_DIR", str(root / "trellis-data"))
        patch.setenv("XDG_DATA_HOME", str(root / "share"))
        yield


@pytest.fixture(scope="session", autouse=True)
def quiet_logs() -> Settings:
    """Warnings and errors only, as JSON on stderr: what services print when configured. A test
    that reconfigures logging restores these (tests import no conftest by name: with several
    conftest modules, which one `import conftest` finds depends on what ran first)."""
    configure(QUIET_LOGS)
    return QUIET_LOGS

_names = itertools.count()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture(scope="session")
def settings(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings.from_env(
        {},
        nats_url=nats_url,
        data_dir=tmp_path_factory.mktemp("data"),
        stream_storage="memory",
        log_format="json",
        log_level="warning",
        heartbeat_seconds=0.5,
        heartbeat_timeout_seconds=3.0,
    )


@pytest.fixture(scope="session")
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    bus = await Bus.connect(settings, name="tests")
    await bus.ensure_streams()
    yield bus
    await bus.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL for the session (no fsync: its data is thrown away), outside pytest's
    basetemp for the reason `stack_dir` gives."""
    path = Path(tempfile.mkdtemp(prefix="trellis-pg-"))
    server = EmbeddedPostgres(path, durable=False)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def database_url(postgres_server: EmbeddedPostgres, unique: str) -> AsyncIterator[str]:
    """A new empty database for this test; dropped afterwards."""
    import asyncpg

    name = f"test_{unique}_{next(_names)}"
    admin = await asyncpg.connect(postgres_server.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A temp dir for a whole embedded stack, outside pytest's basetemp: as root PostgreSQL runs as
    another user, who must traverse the path, and a pytest starting meanwhile resets its root to 0700."""
    path = Path(tempfile.mkdtemp(prefix="trellis-stack-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def unique() -> str:
    """A fresh token for tenants, durables and runs so tests never see each other's messages."""
    return f"t{next(_names)}"
