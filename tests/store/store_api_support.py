"""Fixtures and helpers of the store API tests: a running store on the test's own database, a
tenant with a published template, rows the projection would write, and a TCP proxy to cut
PostgreSQL off."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest

from trellis_core.bus import Bus
from trellis_core.events import SourceFile
from trellis_core.sealed import new_master_key
from trellis_core.settings import Settings
from trellis_store.api import (
    Documents,
    EnvironmentPut,
    IssuedToken,
    StoreError,
    StoreRequest,
    TemplateDocument,
    TemplatePublish,
    TemplateRef,
    TenantCreate,
)
from trellis_store.client import StoreClient
from trellis_store.service import serve

T = TypeVar("T")

TEMPLATE_TEXT = "kind: EnvironmentTemplate\nname: web\nversion: '1'\n"
RESOURCE_TEXT = "kind: ResourceTemplate\nname: vpc\nversion: '1'\n"


@dataclass
class RunningStore:
    client: StoreClient
    settings: Settings
    database_url: str
    task: asyncio.Task[None]

    async def ask(self, request: StoreRequest, into: type[T]) -> T:
        """The answer, failing the test on a StoreError."""
        answer = await self.client.ask(request, into)
        assert not isinstance(answer, StoreError), answer
        return answer

    async def refused(self, request: StoreRequest) -> StoreError:
        """The StoreError the request answers, failing the test on any other answer."""
        answer = await self.client.ask(request, msgspec.Raw)
        assert isinstance(answer, StoreError), f"expected a refusal, got {bytes(answer)[:200]!r}"
        return answer

    async def sql(self, query: str, *args: Any) -> list[Any]:
        """Run SQL on the store's database directly: to check what is stored, or to write rows the
        projection would write."""
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def running_store(
    bus: Bus, settings: Settings, database_url: str, projection: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[RunningStore]:
    """A store serving on its own database; `projection` options go to its Projection (a tenant
    filter and durables of the test's own, to project the test's bus events)."""
    overrides = {"seal_key": new_master_key(), **overrides}
    store_settings = msgspec.structs.replace(settings, database_url=database_url, **overrides)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, store_settings, stop, ready, projection_options=projection))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raise what stopped it
    assert ready.is_set(), "the store did not become ready within 30 s"
    client = StoreClient(bus.nc, timeout=10)
    try:
        yield RunningStore(client=client, settings=store_settings, database_url=database_url, task=task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await client.close()


@pytest.fixture
async def store(bus: Bus, settings: Settings, database_url: str) -> AsyncIterator[RunningStore]:
    async with running_store(bus, settings, database_url) as running:
        yield running


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bundle(*texts: tuple[str, str, str, str, str]) -> tuple[tuple[SourceFile, ...], tuple[TemplateDocument, ...]]:
    """(path, kind, name, version, text) each: the sources and the documents of a bundle."""
    sources = tuple(SourceFile(path=path, text=text) for path, _, _, _, text in texts)
    documents = tuple(
        TemplateDocument(kind=kind, name=name, version=version, path=path, digest=digest(text))
        for path, kind, name, version, text in texts
    )
    return sources, documents


async def tenant_with_template(store: RunningStore, tenant: str) -> IssuedToken:
    """A tenant with EnvironmentTemplate web@1 (and ResourceTemplate vpc@1) published."""
    issued = await store.ask(TenantCreate(name=tenant, admin_user="alice@example.com"), IssuedToken)
    sources, documents = bundle(
        ("web.yaml", "EnvironmentTemplate", "web", "1", TEMPLATE_TEXT),
        ("vpc.yaml", "ResourceTemplate", "vpc", "1", RESOURCE_TEXT),
    )
    await store.ask(TemplatePublish(tenant=tenant, sources=sources, documents=documents, actor="alice"), Documents)
    return issued


def env_put(tenant: str, name: str = "dev", **kw: Any) -> EnvironmentPut:
    return EnvironmentPut(tenant=tenant, name=name, template=TemplateRef(name="web", version="1"), **kw)


async def seed_run(store: RunningStore, tenant: str, run_id: str, environment: str = "dev", **cols: Any) -> None:
    """A run row as the projection writes one for a bus run."""
    await store.sql(
        "INSERT INTO runs (tenant, run_id, environment, action, status, requested_by, requested_at, workflow) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        tenant,
        run_id,
        environment,
        cols.get("action", "deploy"),
        cols.get("status", "running"),
        cols.get("requested_by", "bob"),
        cols.get("requested_at", datetime.now(UTC)),
        cols.get("workflow"),
    )


class TcpProxy:
    """Forwards a local port to PostgreSQL; `cut()` closes every connection and refuses new ones
    (PostgreSQL "down"), `restore()` accepts again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()
        self.refusing = False  # accept, then hang up at once: PostgreSQL "down", with attempts counted
        self.refused = 0
        self.refused_changed = asyncio.Event()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    def url(self, database_url: str) -> str:
        parts = urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0] + "@" if len(netloc) == 2 else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.links):
            writer.close()
        self.links.clear()

    async def restore(self) -> None:
        await self.start()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            self.refused_changed.set()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
