"""What every executor is: `run(work, workspace, sink) -> Outcome`, plus the workspace layout.

The agent does not know which backend it drives. Timeouts are applied once, here, by
`execute`; cancellation is asyncio cancellation, and each executor cleans up what it started
(process group, pod, container) before letting it propagate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

import msgspec

from trellis_agent import workspace_files
from trellis_agent.sink import LogStream
from trellis_core.events import WorkItem
from trellis_core.workflow import ApprovalSpec, ContainerSpec, FunctionSpec

OutcomeStatus = Literal["succeeded", "failed"]
FUNCTION_START_SECONDS = 300.0  # beyond a function's `until`: pulling and starting its image


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How an attempt ended. Cancellation is not an outcome: it is asyncio.CancelledError."""

    status: OutcomeStatus
    outputs: dict[str, Any] = {}
    exit_code: int | None = None
    reason: str = ""
    retryable: bool = True
    timed_out: bool = False

    @classmethod
    def succeeded(cls, outputs: dict[str, Any] | None = None, exit_code: int | None = None) -> Outcome:
        return cls(status="succeeded", outputs=outputs or {}, exit_code=exit_code)

    @classmethod
    def failed(
        cls, reason: str, *, exit_code: int | None = None, retryable: bool = True, timed_out: bool = False
    ) -> Outcome:
        return cls(status="failed", reason=reason, exit_code=exit_code, retryable=retryable, timed_out=timed_out)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


class Sink(Protocol):
    """Where an executor writes what it observes; `trellis_agent.sink.LogSink` is the real one."""

    async def write(self, stream: LogStream, text: str) -> None: ...

    async def system(self, text: str) -> None: ...


@functools.lru_cache(maxsize=8)
def _resolved(data_dir: Path) -> Path:
    return data_dir.resolve()


@dataclass(frozen=True)
class Workspace:
    """A resource run's working directory: `<data dir>/<tenant>/<run>/<workspace key>` on the agent.

    `key` is the activity's workspace (or its id), made safe as one path segment; container
    backends mount `root` (or a volume named after `volume_name`) at the container workspace.
    """

    root: Path
    tenant: str
    run_id: str
    key: str

    @classmethod
    def for_work(cls, data_dir: Path, work: WorkItem) -> Workspace:
        raw = work.activity.workspace or work.activity.id
        key = raw.replace("/", "~")
        if key in ("", ".", "..") or "\x00" in key:
            key = "ws-" + hashlib.sha256(raw.encode()).hexdigest()[:12]
        # The data dir is resolved once, not every path below it for every attempt (five lstat
        # calls each); tenant and run id are one safe segment each (the agent checks them).
        root = Path(f"{_resolved(data_dir)}/{work.tenant}/{work.run_id}/{key}")
        return cls(root=root, tenant=work.tenant, run_id=work.run_id, key=key)

    @property
    def control_dir(self) -> Path:
        """Where the agent puts its per-attempt files (inputs, outputs) inside the workspace."""
        return self.root / ".trellis"

    @property
    def bundles_dir(self) -> Path:
        """This tenant's bundles by digest on this agent (`<data dir>/<tenant>/.bundles`): a name no
        run id can take, pruned by the janitor like a run once unused for the retention period."""
        return self.root.parent.parent / ".bundles"

    @property
    def volume_name(self) -> str:
        """A DNS-1123 name for a volume/PVC holding this workspace (stable per resource run)."""
        raw = f"trellis-ws-{self.run_id}-{self.key}".lower()
        cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in raw).strip("-")
        if len(cleaned) > 63:
            digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
            cleaned = f"{cleaned[:54].rstrip('-')}-{digest}"
        return cleaned

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # A `.trellis` that is a symlink is left for the readers and writers to refuse by name.
        with contextlib.suppress(workspace_files.UnsafePath), workspace_files.directory(self.root, ".trellis"):
            pass
        os.utime(self.root)  # marks the workspace in use, for the janitor


@dataclass(frozen=True)
class AttemptFiles:
    """The files one attempt exchanges with its command, by host path and by workspace-relative name."""

    inputs: Path
    outputs: Path

    @property
    def inputs_rel(self) -> str:
        return f".trellis/{self.inputs.name}"

    @property
    def outputs_rel(self) -> str:
        return f".trellis/{self.outputs.name}"


def function_container(work: WorkItem, port: int) -> ContainerSpec:
    """The container that serves a function image on `port` (docker and kubernetes backends)."""
    spec = work.activity.spec
    assert isinstance(spec, FunctionSpec)
    return ContainerSpec(
        image=spec.image,
        env={**spec.env, "PORT": str(port)},
        cpu_limit_milli=spec.cpu_limit_milli,
        memory_limit_mb=spec.memory_limit_mb,
    )


def attempt_files(work: WorkItem, workspace: Workspace) -> AttemptFiles | Outcome:
    """Write `TRELLIS_INPUTS` (0600) and clear a stale `TRELLIS_OUTPUTS` for this attempt; a
    symlink the workspace holds on the way is refused (a failed Outcome), never followed."""
    workspace.prepare()
    stem = f"{work.activity.id.replace('/', '~')}.{work.attempt}"
    files = AttemptFiles(
        inputs=workspace.control_dir / f"{stem}.inputs.json",
        outputs=workspace.control_dir / f"{stem}.outputs.json",
    )
    try:
        workspace_files.write_file(workspace.root, files.inputs_rel, json.dumps(work.activity.inputs).encode())
        workspace_files.remove_file(workspace.root, files.outputs_rel)
    except workspace_files.UnsafePath as exc:
        return Outcome.failed(f"the attempt's files: {exc}", retryable=False)
    return files


def forget_sensitive_inputs(work: WorkItem, workspace: Workspace, files: AttemptFiles) -> None:
    """Remove the attempt's inputs file once the command is done when it holds a sensitive input
    (one named sensitive, or one that held a sealed token: the agent names those too), so the
    opened value does not rest in the workspace until the janitor prunes it."""
    if any(name in work.activity.inputs for name in work.activity.sensitive):
        with contextlib.suppress(workspace_files.UnsafePath, OSError):
            workspace_files.remove_file(workspace.root, files.inputs_rel)


def trellis_env(work: WorkItem, inputs: str, outputs: str) -> dict[str, str]:
    """The variables every command gets, with the paths as the command sees them."""
    return {
        "TRELLIS_INPUTS": inputs,
        "TRELLIS_OUTPUTS": outputs,
        "TRELLIS_ACTION": work.action,
        "TRELLIS_RUN_ID": work.run_id,
        "TRELLIS_ACTIVITY_ID": work.activity.id,
        "TRELLIS_TENANT": work.tenant,
        "TRELLIS_ENVIRONMENT": work.environment,
        "TRELLIS_ATTEMPT": str(work.attempt),
    }


def read_outputs(workspace: Workspace, files: AttemptFiles) -> dict[str, Any] | Outcome:
    """The JSON object a command wrote to `$TRELLIS_OUTPUTS` ({} if none), or a failed Outcome
    (also when that file is a symlink or lies beyond one: it is not read). The file is removed
    once read."""
    limit = workspace_files.MAX_READ_BYTES
    try:
        data = workspace_files.read_file(workspace.root, files.outputs_rel, limit + 1)
    except workspace_files.UnsafePath as exc:
        return Outcome.failed(f"$TRELLIS_OUTPUTS: {exc}", retryable=False)
    if data is None:
        return {}
    # Consumed: the outputs travel on in the activity's end event (sensitive ones sealed), and the
    # file would keep a sensitive output in clear in the workspace until the janitor prunes it.
    with contextlib.suppress(workspace_files.UnsafePath, OSError):
        workspace_files.remove_file(workspace.root, files.outputs_rel)
    if len(data) > limit:
        return Outcome.failed(f"$TRELLIS_OUTPUTS is larger than {limit} bytes", retryable=False)
    return parse_outputs(data.decode(errors="replace"), where="$TRELLIS_OUTPUTS")


def parse_outputs(text: str, *, where: str) -> dict[str, Any] | Outcome:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Outcome.failed(f"{where} is not valid JSON: {exc}", retryable=False)
    if not isinstance(value, dict):
        return Outcome.failed(f"{where} must hold a JSON object, got {type(value).__name__}", retryable=False)
    return value


def write_spec_files(files: dict[str, str], workspace: Workspace, container_root: str) -> Outcome | None:
    """Write `ContainerSpec.files` (base64) under the workspace; absolute paths must lie inside it,
    and a symlink the workspace holds on the way is refused, never followed."""
    for name, content in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute():
            try:
                rel = rel.relative_to(container_root)
            except ValueError:
                return Outcome.failed(f"file {name!r} lies outside the workspace {container_root}", retryable=False)
        if ".." in rel.parts:
            return Outcome.failed(f"file {name!r} climbs out of the workspace", retryable=False)
        try:
            data = base64.b64decode(content, validate=True)
        except ValueError:
            return Outcome.failed(f"file {name!r} is not valid base64", retryable=False)
        try:
            workspace_files.write_file(workspace.root, rel.as_posix(), data, 0o644)
        except workspace_files.UnsafePath as exc:
            return Outcome.failed(f"file {name!r}: {exc}", retryable=False)
    return None


class Executor(Protocol):
    """One backend. Returns an Outcome; raises CancelledError after cleaning up when cancelled."""

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome: ...


def with_default_timeout(work: WorkItem, seconds: float) -> WorkItem:
    """The work item with the agent's default timeout when its activity sets none (0: none).
    An approval waits for a person and gets none; a function at least its own `until` and the
    time to start its image."""
    limit = work.activity.timeout_seconds
    spec = work.activity.spec
    if seconds <= 0 or (limit is not None and limit > 0) or isinstance(spec, ApprovalSpec):
        return work
    if isinstance(spec, FunctionSpec):
        seconds = max(seconds, spec.until_seconds + FUNCTION_START_SECONDS)
    return msgspec.structs.replace(work, activity=msgspec.structs.replace(work.activity, timeout_seconds=seconds))


async def execute(executor: Executor, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
    """Run with the activity's timeout; a timeout cancels the executor (it cleans up) and fails."""
    timeout = work.activity.timeout_seconds
    if timeout is None or timeout <= 0:
        return await executor.run(work, workspace, sink)
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await executor.run(work, workspace, sink)
    except TimeoutError:
        if not deadline.expired():
            raise
        await sink.system(f"timed out after {timeout:g}s")
        return Outcome.failed(f"timed out after {timeout:g}s", timed_out=True)


READ_SIZE = 64 * 1024
MAX_PARTIAL_LINE = 16 * 1024  # a line longer than this is written in pieces


class LineBuffer:
    """Cuts a byte stream into whole lines (a very long line in pieces), decoded as UTF-8."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, block: bytes) -> str:
        """The complete text in `block` and what came before it; keeps an unfinished line."""
        self._partial += block
        cut = self._partial.rfind(b"\n") + 1
        if cut == 0 and len(self._partial) < MAX_PARTIAL_LINE:
            return ""
        if cut == 0:
            cut = len(self._partial)
        text, self._partial = self._partial[:cut], self._partial[cut:]
        return text.decode(errors="replace")

    def rest(self) -> str:
        text, self._partial = self._partial, b""
        return text.decode(errors="replace")


async def pump_lines(read: Callable[[int], Awaitable[bytes]], name: LogStream, sink: Sink) -> None:
    """Copy a byte stream to the sink line by line."""
    lines = LineBuffer()
    while block := await read(READ_SIZE):
        if text := lines.feed(block):
            await sink.write(name, text)
    if text := lines.rest():
        await sink.write(name, text)


async def wait_until_listening(host: str, port: int, within: float) -> None:
    """Wait for a server that gives no readiness signal but accepting connections."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
        except (OSError, TimeoutError):
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {within:g}s") from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
