"""What every executor backend does, checked on each one where it applies (executor_backends.py).

Container backends (process, docker, kubernetes) run the same shell scripts; the endpoint
backends (http, function) take the items that apply to a call: cancel, timeout, masking.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from agent_support import ChunkCollector, RecordingSink

from trellis_agent.executors.base import Outcome, Workspace, execute
from trellis_agent.sink import MASK, LogSink

if TYPE_CHECKING:
    from executor_backends import Backend, CommandBackend

pytest_plugins = ["executor_backends"]  # its fixtures: `<name>_backend` for each name below
COMMAND_BACKENDS = ("process", "docker", "kubernetes")  # they run container activities
ENDPOINT_BACKENDS = ("http", "function")  # they call an HTTP endpoint
ALL_BACKENDS = (*COMMAND_BACKENDS, *ENDPOINT_BACKENDS)
each_backend = pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
each_command_backend = pytest.mark.parametrize("command_backend", COMMAND_BACKENDS, indirect=True)
LARGE_LOG_LINES = 20_000


@each_command_backend
async def test_the_exit_code_decides_success(command_backend: CommandBackend, tmp_path: Path) -> None:
    ok = command_backend.command("echo fine")
    failing = command_backend.command("echo about to fail; exit 7")
    passed = await execute(command_backend.executor, ok, Workspace.for_work(tmp_path, ok), RecordingSink())
    failed = await execute(command_backend.executor, failing, Workspace.for_work(tmp_path, failing), RecordingSink())
    assert passed == Outcome.succeeded({}, exit_code=0)
    assert failed.status == "failed"
    assert failed.exit_code == 7
    assert failed.reason == "exited with code 7"
    assert failed.retryable


@each_command_backend
async def test_a_success_condition_overrides_the_exit_code(command_backend: CommandBackend, tmp_path: Path) -> None:
    accepted = command_backend.command("exit 3", success_condition="$(exit_code == 3)$")
    refused = command_backend.command("exit 0", success_condition="$(exit_code == 3)$")
    run = command_backend.executor
    ok = await execute(run, accepted, Workspace.for_work(tmp_path, accepted), RecordingSink())
    not_ok = await execute(run, refused, Workspace.for_work(tmp_path, refused), RecordingSink())
    assert ok == Outcome.succeeded({}, exit_code=3)
    assert not_ok.status == "failed"
    assert not_ok.exit_code == 0


@each_backend
async def test_cancelling_stops_the_work_and_cleans_up(backend: Backend, tmp_path: Path) -> None:
    work = backend.hanging()
    workspace = Workspace.for_work(tmp_path, work)
    sink = RecordingSink()
    task = asyncio.create_task(execute(backend.executor, work, workspace, sink))
    await backend.wait_started(sink)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await backend.assert_cleaned_up(work, workspace)


@each_backend
async def test_a_timeout_ends_timed_out_and_cleans_up(backend: Backend, tmp_path: Path) -> None:
    work = backend.hanging(timeout_seconds=backend.timeout_seconds)
    workspace = Workspace.for_work(tmp_path, work)
    sink = RecordingSink()
    outcome = await execute(backend.executor, work, workspace, sink)
    await backend.wait_started(sink)  # it did start before its time was up
    assert outcome.status == "failed"
    assert outcome.timed_out
    assert outcome.retryable  # the scheduler's retry policy decides whether it runs again
    assert outcome.reason == f"timed out after {backend.timeout_seconds:g}s"
    await backend.assert_cleaned_up(work, workspace)


@each_command_backend
async def test_two_activities_sharing_a_workspace_see_each_others_files(
    command_backend: CommandBackend, tmp_path: Path
) -> None:
    first = command_backend.command("echo state > state.txt", workspace="resource/vpc", activity_id="resource/vpc/init")
    second = command_backend.command(
        "cat state.txt", workspace="resource/vpc", activity_id="resource/vpc/plan", run_id=first.run_id
    )
    other = command_backend.command("cat state.txt", workspace="resource/db", run_id=first.run_id)
    run = command_backend.executor
    assert (await execute(run, first, Workspace.for_work(tmp_path, first), RecordingSink())).ok
    sink = RecordingSink()
    assert (await execute(run, second, Workspace.for_work(tmp_path, second), sink)).ok
    assert "state\n" in sink.text()
    isolated = await execute(run, other, Workspace.for_work(tmp_path, other), RecordingSink())
    assert isolated.status == "failed"  # another resource's workspace does not hold the file


@each_command_backend
async def test_the_outputs_file_becomes_the_outputs(command_backend: CommandBackend, tmp_path: Path) -> None:
    script = 'cat "$TRELLIS_INPUTS" > "$TRELLIS_OUTPUTS"'
    work = command_backend.command(script, inputs={"size": 3, "name": "vpc", "tags": ["a", "b"]})
    outcome = await execute(command_backend.executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome == Outcome.succeeded({"size": 3, "name": "vpc", "tags": ["a", "b"]}, exit_code=0)


@each_command_backend
@pytest.mark.parametrize(
    ("written", "complaint"),
    [
        pytest.param("not json", "is not valid JSON", id="not-json"),
        pytest.param("[1, 2]", "must hold a JSON object, got list", id="not-an-object"),
    ],
)
async def test_outputs_that_are_not_a_json_object_are_a_clear_failure_without_retry(
    command_backend: CommandBackend, tmp_path: Path, written: str, complaint: str
) -> None:
    work = command_backend.command(f"echo '{written}' > \"$TRELLIS_OUTPUTS\"")
    outcome = await execute(command_backend.executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert not outcome.retryable
    assert complaint in outcome.reason


@each_backend
async def test_sensitive_values_are_masked_in_the_logs(backend: Backend, tmp_path: Path) -> None:
    secret = "s3cr3t-value"
    work = backend.leaking(secret)
    collector = ChunkCollector()
    async with LogSink.for_work(work, collector, flush_seconds=0.05) as sink:
        await execute(backend.executor, work, Workspace.for_work(tmp_path, work), sink)
    assert collector.chunks, "the work logged nothing"
    assert secret not in collector.text()
    assert f"token={MASK}" in collector.text()


@each_command_backend
async def test_a_large_log_arrives_whole_and_in_order(command_backend: CommandBackend, tmp_path: Path) -> None:
    script = f"i=0; while [ $i -lt {LARGE_LOG_LINES} ]; do echo line-$i; i=$((i+1)); done"
    work = command_backend.command(script)
    collector = ChunkCollector()
    async with LogSink.for_work(work, collector, flush_seconds=0.05, chunk_bytes=4096) as sink:
        outcome = await execute(command_backend.executor, work, Workspace.for_work(tmp_path, work), sink)
    assert outcome.ok, outcome.reason
    output = [c for c in collector.chunks if c.stream != "system"]
    assert [c.sequence for c in collector.chunks] == list(range(len(collector.chunks)))
    assert all(len(c.data.encode()) <= 4096 for c in collector.chunks)
    assert {c.stream for c in output} == {"stdout"}
    assert "".join(c.data for c in output).splitlines() == [f"line-{i}" for i in range(LARGE_LOG_LINES)]
    assert all(c.attempt == work.attempt and c.activity_id == work.activity.id for c in collector.chunks)
