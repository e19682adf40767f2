"""Symlinks a command leaves in its workspace are never followed by the agent afterwards.

A command (or a container) may plant `.trellis/x.outputs.json -> /etc/passwd` or a symlinked
directory; the agent's reads and writes of the outputs, inputs and `files` entries refuse them,
and nothing outside the workspace is read or written.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_support import RecordingSink, environ_path, shell, work_item
from podman_support import IMAGE

from trellis_agent import workspace_files
from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.docker import DockerExecutor
from trellis_agent.executors.process import ProcessExecutor
from trellis_core.workflow import ContainerSpec

pytest_plugins = ["executor_backends"]  # the `podman_socket` fixture


@pytest.fixture
def executor() -> ProcessExecutor:
    return ProcessExecutor(kill_grace_seconds=0.5, environ=environ_path())


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the data dir standing for the agent's host files."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret.json").write_text('{"password": "hunter2"}')
    return host


def _files_unchanged(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret.json"]
    assert (outside / "secret.json").read_text() == '{"password": "hunter2"}'


async def test_an_outputs_file_that_is_a_symlink_is_refused_and_not_read(
    executor: ProcessExecutor, outside: Path, tmp_path: Path
) -> None:
    work = work_item(shell(f'ln -s {outside}/secret.json "$TRELLIS_OUTPUTS"'))
    sink = RecordingSink()
    outcome = await execute(executor, work, Workspace.for_work(tmp_path / "data", work), sink)
    assert not outcome.ok
    assert not outcome.retryable
    stem = "resource~app~task~build.1"
    assert outcome.reason == (
        f"$TRELLIS_OUTPUTS: '.trellis/{stem}.outputs.json': the workspace holds a symlink there: "
        "refused, never followed"
    )
    assert "hunter2" not in repr(outcome)
    _files_unchanged(outside)


async def test_an_inputs_file_planted_as_a_symlink_by_an_earlier_attempt_is_not_written_through(
    executor: ProcessExecutor, outside: Path, tmp_path: Path
) -> None:
    first = work_item(shell(f'ln -s {outside}/secret.json "${{TRELLIS_INPUTS%.1.inputs.json}}.2.inputs.json"'))
    workspace = Workspace.for_work(tmp_path / "data", first)
    assert (await execute(executor, first, workspace, RecordingSink())).ok
    second = work_item(shell("cat $TRELLIS_INPUTS"), run_id=first.run_id, attempt=2, inputs={"x": 1})
    sink = RecordingSink()
    outcome = await execute(executor, second, workspace, sink)
    assert not outcome.ok
    assert "'.trellis/resource~app~task~build.2.inputs.json': the workspace holds a symlink there" in outcome.reason
    assert outcome.reason in sink.text()
    _files_unchanged(outside)


async def test_a_control_directory_replaced_by_a_symlink_is_refused(
    executor: ProcessExecutor, outside: Path, tmp_path: Path
) -> None:
    first = work_item(shell(f"rm -rf .trellis && ln -s {outside} .trellis"))
    workspace = Workspace.for_work(tmp_path / "data", first)
    planted = await execute(executor, first, workspace, RecordingSink())
    assert planted.reason == (
        "$TRELLIS_OUTPUTS: '.trellis/resource~app~task~build.1.outputs.json': the workspace holds a symlink"
        " at '.trellis': refused, never followed"
    )
    second = work_item(shell("true"), run_id=first.run_id, attempt=2)
    outcome = await execute(executor, second, workspace, RecordingSink())
    assert outcome.reason == (
        "the attempt's files: '.trellis/resource~app~task~build.2.inputs.json': the workspace holds a symlink"
        " at '.trellis': refused, never followed"
    )
    _files_unchanged(outside)


async def test_a_files_entry_through_a_symlinked_directory_is_refused(
    executor: ProcessExecutor, outside: Path, tmp_path: Path
) -> None:
    first = work_item(shell(f"ln -s {outside} conf"), workspace="app")
    workspace = Workspace.for_work(tmp_path / "data", first)
    assert (await execute(executor, first, workspace, RecordingSink())).ok
    content = base64.b64encode(b"owned").decode()
    spec = ContainerSpec(command=("true",), files={"/workspace/conf/app.ini": content})
    second = work_item(spec, run_id=first.run_id, workspace="app", activity_id="resource/app/task/configure")
    outcome = await execute(executor, second, workspace, RecordingSink())
    assert not outcome.ok
    assert not outcome.retryable
    assert outcome.reason == (
        "file '/workspace/conf/app.ini': 'conf/app.ini': the workspace holds a symlink at 'conf': "
        "refused, never followed"
    )
    _files_unchanged(outside)


async def test_a_files_entry_that_is_itself_a_symlink_is_not_written_through(
    executor: ProcessExecutor, outside: Path, tmp_path: Path
) -> None:
    first = work_item(shell(f"ln -s {outside}/secret.json app.ini"), workspace="app")
    workspace = Workspace.for_work(tmp_path / "data", first)
    assert (await execute(executor, first, workspace, RecordingSink())).ok
    spec = ContainerSpec(command=("true",), files={"app.ini": base64.b64encode(b"owned").decode()})
    second = work_item(spec, run_id=first.run_id, workspace="app", activity_id="resource/app/task/configure")
    outcome = await execute(executor, second, workspace, RecordingSink())
    assert outcome.reason == "file 'app.ini': 'app.ini': the workspace holds a symlink there: refused, never followed"
    _files_unchanged(outside)


async def test_the_inputs_file_is_readable_by_its_owner_only(executor: ProcessExecutor, tmp_path: Path) -> None:
    work = work_item(shell('stat -c %a "$TRELLIS_INPUTS"'), inputs={"token": "s3cret"})
    sink = RecordingSink()
    assert (await execute(executor, work, Workspace.for_work(tmp_path, work), sink)).ok
    assert sink.text("stdout") == "600\n"


def test_a_fifo_in_place_of_the_outputs_file_is_refused_without_blocking(tmp_path: Path) -> None:
    (tmp_path / ".trellis").mkdir()
    os.mkfifo(tmp_path / ".trellis" / "x.outputs.json")
    with pytest.raises(workspace_files.UnsafePath, match="not a regular file in the workspace"):
        workspace_files.read_file(tmp_path, ".trellis/x.outputs.json")


def test_plain_files_are_read_and_written_below_the_root(tmp_path: Path) -> None:
    workspace_files.write_file(tmp_path, "a/b/c.json", json.dumps({"k": 1}).encode(), 0o640)
    assert (tmp_path / "a" / "b" / "c.json").stat().st_mode & 0o777 == 0o640
    assert workspace_files.read_file(tmp_path, "a/b/c.json") == b'{"k": 1}'
    assert workspace_files.read_file(tmp_path, "a/missing/c.json") is None


@pytest.fixture
async def docker(podman_socket: str) -> AsyncIterator[DockerExecutor]:
    config = AgentConfig.from_env({}, executor="docker", docker_socket=podman_socket, default_image=IMAGE)
    executor = DockerExecutor.from_config(config)
    yield executor
    await executor.close()


async def test_a_container_pointing_its_outputs_at_a_host_path_gets_nothing_from_the_host(
    docker: DockerExecutor, outside: Path, tmp_path: Path
) -> None:
    # Inside the container the target does not even exist; on the agent it is a host file.
    plant = f'ln -s {outside}/secret.json "$TRELLIS_OUTPUTS"'
    work = work_item(ContainerSpec(image=IMAGE, command=("sh", "-c", plant)))
    sink = RecordingSink()
    outcome = await execute(docker, work, Workspace.for_work(tmp_path / "data", work), sink)
    assert "the workspace holds a symlink there: refused, never followed" in outcome.reason, sink.text()
    assert "hunter2" not in repr(outcome)
    _files_unchanged(outside)
