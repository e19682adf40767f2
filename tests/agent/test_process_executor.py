"""The process executor runs real commands in a workspace directory."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from agent_support import (
    ChunkCollector,
    RecordingSink,
    environ_path,
    is_running,
    read_pid,
    shell,
    wait_until_gone,
    work_item,
)

from trellis_agent.executors.base import Outcome, Workspace, execute
from trellis_agent.executors.process import ProcessExecutor
from trellis_agent.sink import LogSink
from trellis_core.workflow import ContainerSpec, HttpSpec


@pytest.fixture
def executor() -> ProcessExecutor:
    return ProcessExecutor(kill_grace_seconds=0.5, environ=environ_path())


async def test_logs_arrive_in_order_with_no_gap(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(shell("i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done"))
    collector = ChunkCollector()
    async with LogSink.for_work(work, collector, flush_seconds=0.05, chunk_bytes=4096) as sink:
        outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), sink)
    assert outcome.ok
    assert [c.sequence for c in collector.chunks] == list(range(len(collector.chunks)))
    assert len(collector.chunks) > 3
    assert all(len(c.data.encode()) <= 4096 for c in collector.chunks)
    assert collector.text().splitlines() == [f"line-{i}" for i in range(3000)]
    assert {c.stream for c in collector.chunks} == {"stdout"}
    assert all(c.attempt == work.attempt and c.activity_id == work.activity.id for c in collector.chunks)


async def test_stderr_is_kept_apart_from_stdout(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(shell("echo out; echo err >&2"))
    sink = RecordingSink()
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), sink)
    assert outcome.ok
    assert sink.text("stdout") == "out\n"
    assert sink.text("stderr") == "err\n"


async def test_outputs_flow_from_the_outputs_file_and_inputs_arrive(executor: ProcessExecutor, tmp_path: Path) -> None:
    script = (
        "python3 -c \"import json,os; i=json.load(open(os.environ['TRELLIS_INPUTS']));"
        " json.dump({'greeting': 'hello ' + i['name'], 'action': os.environ['TRELLIS_ACTION'],"
        " 'cwd': os.getcwd()}, open(os.environ['TRELLIS_OUTPUTS'], 'w'))\""
    )
    work = work_item(shell(script), inputs={"name": "world"})
    workspace = Workspace.for_work(tmp_path, work)
    outcome = await execute(executor, work, workspace, RecordingSink())
    assert outcome == Outcome.succeeded(
        {"greeting": "hello world", "action": "deploy", "cwd": str(workspace.root)}, exit_code=0
    )


async def test_the_trellis_variables_and_spec_env_are_set(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(shell('echo "$TRELLIS_RUN_ID $TRELLIS_ACTIVITY_ID $COLOUR"', COLOUR="blue"))
    sink = RecordingSink()
    assert (await execute(executor, work, Workspace.for_work(tmp_path, work), sink)).ok
    assert sink.text("stdout") == f"{work.run_id} {work.activity.id} blue\n"


async def test_a_non_zero_exit_fails_with_its_exit_code(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(shell("echo about to fail; exit 7"))
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert outcome.exit_code == 7
    assert outcome.reason == "exited with code 7"


async def test_a_success_condition_can_accept_another_exit_code(executor: ProcessExecutor, tmp_path: Path) -> None:
    spec = ContainerSpec(command=("sh", "-c", "exit 3"), success_condition="$(exit_code == 3)$")
    work = work_item(spec)
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.ok
    assert outcome.exit_code == 3


async def test_a_timeout_kills_the_whole_process_group(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(shell("sleep 300 & echo $! > grandchild.pid; echo started; wait"), timeout_seconds=1.0)
    workspace = Workspace.for_work(tmp_path, work)
    outcome = await execute(executor, work, workspace, RecordingSink())
    assert outcome.status == "failed"
    assert outcome.timed_out
    grandchild = read_pid(workspace.root / "grandchild.pid")
    assert await wait_until_gone(grandchild)


async def test_cancelling_kills_the_whole_process_group(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(shell("sleep 300 & echo $! > grandchild.pid; echo started; wait"))
    workspace = Workspace.for_work(tmp_path, work)
    sink = RecordingSink()
    task = asyncio.create_task(execute(executor, work, workspace, sink))
    await sink.wait_for("started")
    grandchild = read_pid(workspace.root / "grandchild.pid")
    assert is_running(grandchild)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_until_gone(grandchild)


async def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    work = work_item(shell("trap '' TERM; echo started; while true; do sleep 0.1; done"), timeout_seconds=0.5)
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.timed_out


async def test_a_background_child_does_not_keep_a_finished_activity_running(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    work = work_item(shell("sleep 300 & echo $! > orphan.pid; echo done"), timeout_seconds=10)
    workspace = Workspace.for_work(tmp_path, work)
    outcome = await execute(executor, work, workspace, RecordingSink())
    assert outcome.ok
    assert await wait_until_gone(read_pid(workspace.root / "orphan.pid"))


async def test_sensitive_values_are_masked_in_every_chunk(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(
        shell('echo "token=$API_TOKEN"; echo "$API_TOKEN" >&2', API_TOKEN="s3cr3t-value"),
        sensitive=("API_TOKEN",),
    )
    collector = ChunkCollector()
    async with LogSink.for_work(work, collector) as sink:
        assert (await execute(executor, work, Workspace.for_work(tmp_path, work), sink)).ok
    assert "s3cr3t-value" not in collector.text()
    assert "token=***" in collector.text()


async def test_spec_files_are_written_into_the_workspace(executor: ProcessExecutor, tmp_path: Path) -> None:
    content = base64.b64encode(b"hello from a file").decode()
    spec = ContainerSpec(
        command=("cat", "conf/app.txt"), files={"/workspace/conf/app.txt": content}, working_dir="/workspace"
    )
    work = work_item(spec)
    sink = RecordingSink()
    assert (await execute(executor, work, Workspace.for_work(tmp_path, work), sink)).ok
    assert sink.text("stdout") == "hello from a file"


async def test_a_missing_binary_fails_without_retrying(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(ContainerSpec(command=("/nonexistent/tool",)))
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert not outcome.retryable
    assert "/nonexistent/tool" in outcome.reason


async def test_outputs_that_are_not_an_object_fail_the_activity(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(shell('echo "[1, 2]" > "$TRELLIS_OUTPUTS"'))
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert "JSON object" in outcome.reason


async def test_the_process_executor_refuses_other_specs(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(HttpSpec(url="http://localhost"), kind="http")
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert not outcome.ok
    assert not outcome.retryable


async def test_one_workspace_is_shared_by_the_stages_of_a_resource(executor: ProcessExecutor, tmp_path: Path) -> None:
    first = work_item(shell("echo state > state.txt"), workspace="resource/vpc", activity_id="resource/vpc/init")
    second = work_item(
        shell("cat state.txt"), workspace="resource/vpc", activity_id="resource/vpc/plan", run_id=first.run_id
    )
    assert (await execute(executor, first, Workspace.for_work(tmp_path, first), RecordingSink())).ok
    sink = RecordingSink()
    assert (await execute(executor, second, Workspace.for_work(tmp_path, second), sink)).ok
    assert sink.text() == "state\n"
    assert (
        json.loads((Workspace.for_work(tmp_path, second).control_dir / "resource~vpc~plan.1.inputs.json").read_text())
        == {}
    )


async def test_a_file_outside_the_workspace_is_refused(executor: ProcessExecutor, tmp_path: Path) -> None:
    spec = ContainerSpec(command=("true",), files={"/etc/evil.conf": base64.b64encode(b"x").decode()})
    work = work_item(spec)
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert not outcome.retryable
    assert "outside the workspace" in outcome.reason
