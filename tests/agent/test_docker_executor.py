"""What only the docker executor does (the rest is in test_executor_contract.py).

Real containers through Podman's Docker-compatible API: the `podman_socket` fixture
(executor_backends.py) skips without Podman, or fails where TRELLIS_REQUIRE_PODMAN=1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_support import RecordingSink, work_item
from podman_support import FUNCTION_IMAGE, IMAGE, containers_of_run

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.docker import DockerExecutor, split_image
from trellis_agent.executors.function import FunctionExecutor
from trellis_agent.executors.http import HttpExecutor
from trellis_core.workflow import ContainerSpec, FunctionSpec

pytest_plugins = ["executor_backends"]  # the `podman_socket` fixture


@pytest.fixture
async def docker(podman_socket: str) -> AsyncIterator[DockerExecutor]:
    config = AgentConfig.from_env(
        {},
        executor="docker",
        docker_socket=podman_socket,
        default_image=IMAGE,
        kill_grace_seconds=1,
        docker_function_address="published",  # reach it on 127.0.0.1, not the container network
    )
    executor = DockerExecutor.from_config(config)
    yield executor
    await executor.close()


async def test_a_container_runs_with_its_logs_split_by_stream_and_outputs_from_the_workspace(
    docker: DockerExecutor, podman_socket: str, tmp_path: Path
) -> None:
    script = 'echo to-out; echo to-err >&2; cat "$TRELLIS_INPUTS" > "$TRELLIS_OUTPUTS"'
    work = work_item(ContainerSpec(image=IMAGE, command=("sh", "-c"), args=(script,)), inputs={"size": 3})
    sink = RecordingSink()
    outcome = await execute(docker, work, Workspace.for_work(tmp_path, work), sink)
    assert outcome.ok, outcome.reason
    assert outcome.outputs == {"size": 3}
    assert sink.text("stdout") == "to-out\n"
    assert sink.text("stderr") == "to-err\n"
    assert await containers_of_run(podman_socket, work.run_id) == []


async def test_an_image_that_cannot_be_pulled_fails_without_retry(docker: DockerExecutor, tmp_path: Path) -> None:
    work = work_item(ContainerSpec(image="localhost:1/nowhere/nothing:1", command=("true",)))
    outcome = await execute(docker, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert not outcome.retryable
    assert "nowhere/nothing" in outcome.reason


def test_image_references_split_into_repository_and_tag() -> None:
    assert split_image("busybox") == ("busybox", "latest")
    assert split_image("ghcr.io/x/tofu:1.8") == ("ghcr.io/x/tofu", "1.8")
    assert split_image("localhost:5000/app") == ("localhost:5000/app", "latest")


async def test_a_function_image_is_started_once_and_polled_until_done(
    docker: DockerExecutor, podman_socket: str, tmp_path: Path
) -> None:
    http = HttpExecutor()
    spec = FunctionSpec(image=FUNCTION_IMAGE, endpoint="", repeat_seconds=0.05, env={"GREETING": "hello"})
    work = work_item(spec, kind="function")
    sink = RecordingSink()
    try:
        outcome = await execute(FunctionExecutor(http, docker), work, Workspace.for_work(tmp_path, work), sink)
    finally:
        await http.close()
    assert outcome.ok, sink.text()
    assert outcome.outputs == {"polls": 3, "greeting": "hello"}
    assert sink.text("system").count("function call") == 3
    assert await containers_of_run(podman_socket, work.run_id) == []
