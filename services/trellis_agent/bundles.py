"""The files beside a run's templates on this agent: fetched once per digest from the bundle object
store, cached under `<workspaces>/<tenant>/.bundles`, written into each workspace's root once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec

from trellis_agent import workspace_files
from trellis_agent.executors.base import Executor, Outcome, Sink, Workspace
from trellis_core.events import BundleFile, WorkItem, bundle_digest, unpack_bundle
from trellis_core.logs import get_logger
from trellis_core.workflow import CheckoutSpec, ContainerSpec, FunctionSpec, IacSpec
from trellis_templates.bundle import file_problems

Fetch = Callable[[str], Awaitable[bytes | None]]
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MARKER = "bundle"  # <workspace>/.trellis/bundle: the digest already written into that workspace
ENV = "TRELLIS_BUNDLE_DIR"
log = get_logger("agent.bundles")


class Bundles:
    """Bundles by digest: each fetched at most once (concurrent asks wait for the first), verified
    against its digest, kept on disk, and written into a workspace once."""

    def __init__(self, fetch: Fetch, *, fetch_timeout_seconds: float = 60.0) -> None:
        self._fetch = fetch
        self._timeout = fetch_timeout_seconds
        self._locks: dict[str, asyncio.Lock] = {}

    async def materialise(self, digest: str, workspace: Workspace) -> Outcome | None:
        """Write bundle `digest` into `workspace.root` unless it is there already; a failed Outcome
        says why not (a refused file is not retryable, a fetch that timed out is)."""
        if not DIGEST.fullmatch(digest):
            return Outcome.failed(f"bundle {digest!r} is not a sha256 digest", retryable=False)
        async with self._locks.setdefault(digest, asyncio.Lock()):
            workspace.prepare()
            marker = f".trellis/{MARKER}"
            with contextlib.suppress(OSError, workspace_files.UnsafePath):
                if workspace_files.read_file(workspace.root, marker, 1024) == digest.encode():
                    return None
            blob = await self._blob(digest, workspace.bundles_dir)
            if isinstance(blob, Outcome):
                return blob
            try:
                files = unpack_bundle(blob)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return Outcome.failed(f"bundle {digest} is not a bundle: {exc}", retryable=False)
            if problems := file_problems(files):
                return Outcome.failed(f"bundle {digest} refused: {'; '.join(problems)}", retryable=False)
            if why := await asyncio.to_thread(write_files, files, workspace.root):
                return Outcome.failed(f"bundle {digest} refused: {why}", retryable=False)
            try:
                workspace_files.write_file(workspace.root, marker, digest.encode())
            except workspace_files.UnsafePath as exc:
                return Outcome.failed(f"bundle {digest} refused: {exc}", retryable=False)
            return None

    async def _blob(self, digest: str, cache_dir: Path) -> bytes | Outcome:
        """The verified bytes of `digest`: from the cache, else fetched and cached."""
        cached = cache_dir / digest.removeprefix("sha256:")
        with contextlib.suppress(OSError):
            blob = await asyncio.to_thread(cached.read_bytes)
            if bundle_digest(blob) == digest:
                os.utime(cached)  # in use: the janitor keeps it
                return blob
        try:
            async with asyncio.timeout(self._timeout):
                fetched = await self._fetch(digest)
        except TimeoutError:
            return Outcome.failed(f"bundle {digest} not fetched within {self._timeout:g}s")
        except Exception as exc:  # a lost connection: another attempt may do better
            return Outcome.failed(f"bundle {digest} not fetched: {type(exc).__name__}: {exc}")
        if fetched is None:
            why = "is not in the bundle object store (expired, or the compiler wrote to another NATS)"
            return Outcome.failed(f"bundle {digest} {why}", retryable=False)
        if bundle_digest(fetched) != digest:
            return Outcome.failed(f"bundle {digest} does not match its digest: refused", retryable=False)
        await asyncio.to_thread(_write_atomically, cached, fetched)
        log.info("bundle_fetched", bundle=digest, size=len(fetched))
        return fetched


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def write_files(files: Sequence[BundleFile], root: Path) -> str:
    """Write checked files under `root` with their permission bits; never through a symlink that
    is already in the workspace. Returns why it stopped ("" when all were written)."""
    for file in files:
        try:
            workspace_files.write_file(root, file.path, file.data, file.mode)
        except workspace_files.UnsafePath as exc:
            return str(exc)
        except OSError as exc:
            return f"{file.path!r}: cannot write it into the workspace ({exc.strerror})"
    return ""


def with_env(work: WorkItem, name: str, value: str) -> WorkItem:
    """The work item with one more environment variable for its command."""
    spec = work.activity.spec
    if not isinstance(spec, ContainerSpec | CheckoutSpec | IacSpec | FunctionSpec):
        return work
    spec = msgspec.structs.replace(spec, env={**spec.env, name: value})
    return msgspec.structs.replace(work, activity=msgspec.structs.replace(work.activity, spec=spec))


class WithBundles:
    """An executor that first writes the run's files into the workspace root (when the activity
    names a bundle) and tells the command where they are: `$TRELLIS_BUNDLE_DIR`, the workspace
    root as the command sees it (`seen_at` for a container backend, else the host path)."""

    def __init__(self, inner: Executor, bundles: Bundles, *, seen_at: str = "") -> None:
        self._inner = inner
        self._bundles = bundles
        self._seen_at = seen_at

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        digest = work.activity.bundle
        if not digest:
            return await self._inner.run(work, workspace, sink)
        refused = await self._bundles.materialise(digest, workspace)
        if refused is not None:
            await sink.system(refused.reason)
            return refused
        where = self._seen_at or str(workspace.root)
        return await self._inner.run(with_env(work, ENV, where), workspace, sink)
