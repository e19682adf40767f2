"""What only the process executor does (the rest is in test_executor_contract.py).

Real commands in a workspace directory on the agent's own machine.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from agent_support import RecordingSink, environ_path, read_pid, shell, wait_until_gone, work_item

from trellis_agent.executors.base import Outcome, Workspace, execute
from trellis_agent.executors.process import ProcessExecutor
from trellis_core.workflow import ContainerSpec, HttpSpec


@pytest.fixture
def executor() -> ProcessExecutor:
    return ProcessExecutor(kill_grace_seconds=0.5, environ=environ_path())


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


async def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    script = "trap '' TERM; echo $$ > shell.pid; echo started; while true; do sleep 0.1; done"
    work = work_item(shell(script), timeout_seconds=0.5)
    workspace = Workspace.for_work(tmp_path, work)
    outcome = await execute(executor, work, workspace, RecordingSink())
    assert outcome.timed_out
    assert await wait_until_gone(read_pid(workspace.root / "shell.pid"))


async def test_a_background_child_does_not_keep_a_finished_activity_running(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    work = work_item(shell("sleep 300 & echo $! > orphan.pid; echo done"), timeout_seconds=10)
    workspace = Workspace.for_work(tmp_path, work)
    outcome = await execute(executor, work, workspace, RecordingSink())
    assert outcome.ok
    assert await wait_until_gone(read_pid(workspace.root / "orphan.pid"))


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


async def test_the_process_executor_refuses_other_specs(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(HttpSpec(url="http://localhost"), kind="http")
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert not outcome.ok
    assert not outcome.retryable


async def test_a_file_outside_the_workspace_is_refused(executor: ProcessExecutor, tmp_path: Path) -> None:
    spec = ContainerSpec(command=("true",), files={"/etc/evil.conf": base64.b64encode(b"x").decode()})
    work = work_item(spec)
    outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert not outcome.retryable
    assert "outside the workspace" in outcome.reason


async def test_each_attempt_writes_its_own_inputs_file_in_the_control_dir(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    work = work_item(
        shell('test "$TRELLIS_INPUTS" = "$PWD/.trellis/resource~vpc~plan.2.inputs.json"'),
        workspace="resource/vpc",
        activity_id="resource/vpc/plan",
        inputs={"cidr": "10.0.0.0/16"},
        attempt=2,
    )
    workspace = Workspace.for_work(tmp_path, work)
    assert (await execute(executor, work, workspace, RecordingSink())).ok
    inputs = workspace.control_dir / "resource~vpc~plan.2.inputs.json"
    assert json.loads(inputs.read_text()) == {"cidr": "10.0.0.0/16"}


async def test_an_inputs_file_holding_a_sensitive_input_is_removed_once_the_command_is_done(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    work = work_item(
        shell('cat "$TRELLIS_INPUTS"; cp "$TRELLIS_INPUTS" "$TRELLIS_WORKSPACE/seen.json"'),
        inputs={"password": "pa55word", "region": "eu"},
        sensitive=("password",),
    )
    workspace = Workspace.for_work(tmp_path, work)
    sink = RecordingSink()
    assert (await execute(executor, work, workspace, sink)).ok
    assert json.loads((workspace.root / "seen.json").read_text())["password"] == "pa55word"  # the command saw it
    assert not list(workspace.control_dir.glob("*.inputs.json"))
