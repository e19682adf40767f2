"""The `process` backend: a container activity as a local subprocess in its workspace directory.

The command runs in a new session (its own process group); on timeout or cancel the whole
group gets SIGTERM, then SIGKILL after a grace period, so no grandchild survives. `image` is
ignored: the command runs on the agent's own machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from trellis_agent.conditions import evaluate
from trellis_agent.executors.base import (
    Outcome,
    Sink,
    Workspace,
    attempt_files,
    forget_sensitive_inputs,
    pump_lines,
    read_outputs,
    trellis_env,
    write_spec_files,
)
from trellis_core.events import WorkItem
from trellis_core.workflow import ContainerSpec


class ProcessExecutor:
    def __init__(
        self,
        *,
        inherit_env: Sequence[str] = ("PATH", "HOME", "LANG", "TZ", "TMPDIR"),
        kill_grace_seconds: float = 5.0,
        container_workspace: str = "/workspace",
        environ: Mapping[str, str] | None = None,
    ) -> None:
        source = os.environ if environ is None else environ
        self._base_env = {k: source[k] for k in inherit_env if k in source}
        self._grace = kill_grace_seconds
        self._container_root = container_workspace

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        spec = work.activity.spec
        if not isinstance(spec, ContainerSpec):
            return Outcome.failed(
                f"the process executor runs container activities, not {spec.__struct_config__.tag}",
                retryable=False,
            )
        argv = [*spec.command, *spec.args]
        if not argv:
            return Outcome.failed("the container spec has no command and no args", retryable=False)
        files = attempt_files(work, workspace)
        if isinstance(files, Outcome):
            await sink.system(files.reason)
            return files
        problem = write_spec_files(spec.files, workspace, self._container_root)
        if problem is not None:
            await sink.system(problem.reason)
            return problem
        cwd = self._working_dir(spec.working_dir, workspace)
        env = {
            **self._base_env,
            **spec.env,
            **trellis_env(work, str(files.inputs), str(files.outputs)),
            "TRELLIS_WORKSPACE": str(workspace.root),
        }
        try:
            exit_code = await run_command(argv, cwd=cwd, env=env, sink=sink, kill_grace_seconds=self._grace)
        finally:
            forget_sensitive_inputs(work, workspace, files)
        if isinstance(exit_code, Outcome):
            return exit_code
        return finish(exit_code, spec.success_condition, read_outputs(workspace, files))

    def _working_dir(self, working_dir: str, workspace: Workspace) -> Path:
        """`/workspace/x` (the container path) and relative paths both map into the workspace."""
        if not working_dir:
            return workspace.root
        path = PurePosixPath(working_dir)
        if path.is_absolute():
            try:
                path = path.relative_to(self._container_root)
            except ValueError:
                return Path(working_dir)
        target = workspace.root / path
        target.mkdir(parents=True, exist_ok=True)
        return target


def finish(exit_code: int, success_condition: str, outputs: dict[str, object] | Outcome) -> Outcome:
    """Turn an exit code (negative: killed by that signal) and outputs into an Outcome."""
    if success_condition:
        result = evaluate(success_condition, {"exit_code": exit_code})
        if result.error:
            return Outcome.failed(result.error, exit_code=exit_code, retryable=False)
        ok = result.holds
    else:
        ok = exit_code == 0
    if not ok:
        return Outcome.failed(describe_exit(exit_code), exit_code=exit_code)
    if isinstance(outputs, Outcome):
        return outputs
    return Outcome.succeeded(dict(outputs), exit_code=exit_code)


def describe_exit(exit_code: int) -> str:
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = str(-exit_code)
        return f"killed by signal {name}"
    return f"exited with code {exit_code}"


async def run_command(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], sink: Sink, kill_grace_seconds: float
) -> int | Outcome:
    """Run `argv` in its own process group, stream its output to `sink`, return its exit code.

    On cancellation the group is terminated (then killed) before CancelledError propagates.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        return Outcome.failed(f"cannot start {argv[0]!r}: {exc.strerror or exc}", retryable=False)
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(pump_lines(proc.stdout.read, "stdout", sink))
            group.create_task(pump_lines(proc.stderr.read, "stderr", sink))
            await _leader_exited(proc)
            # Whatever the leader left behind in its group must not outlive it (and would hold
            # our pipes open); what it wrote is still in the pipes and is read to the end.
            _signal_group(proc.pid, signal.SIGKILL)
            code = await proc.wait()
        return code
    except BaseException:
        await _stop_group(proc, kill_grace_seconds)
        raise


async def _leader_exited(proc: asyncio.subprocess.Process) -> None:
    """Wait for the process itself to exit (`proc.wait()` also waits for its pipes to close)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # already reaped, or no pidfd on this system
        while proc.returncode is None:  # noqa: ASYNC110 - nothing to wait on without a pidfd
            await asyncio.sleep(0.05)
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the whole group, SIGKILL it after `grace` seconds, reap the leader."""
    _signal_group(proc.pid, signal.SIGTERM)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    _signal_group(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
