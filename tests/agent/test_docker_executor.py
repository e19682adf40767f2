"""The docker executor runs real containers through Podman's Docker-compatible API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from agent_support import RecordingSink, shell, work_item
from podman_support import FUNCTION_IMAGE, IMAGE, PodmanUnusable, missing, podman_service

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.docker import DockerExecutor, split_image
from trellis_agent.executors.function import FunctionExecutor
from trellis_agent.executors.http import HttpExecutor
from trellis_core.workflow import ContainerSpec, FunctionSpec

pytestmark = pytest.mark.skipif(bool(missing()), reason=missing() or "podman is available")


@pytest.fixture(scope="module")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with podman_service(tmp_path_factory.mktemp("podman")) as sock:
            yield sock
    except PodmanUnusable as exc:  # raised before the service starts, never at teardown
        pytest.skip(str(exc))


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


async def _containers(socket_path: str, run_id: str) -> list[dict[str, object]]:
    filters = json.dumps({"label": [f"trellis.dev/run={run_id}"]})
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as session,
        session.get("http://docker/v1.41/containers/json", params={"all": "true", "filters": filters}) as resp,
    ):
        return list(await resp.json())


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
    assert await _containers(podman_socket, work.run_id) == []


async def test_a_failing_container_fails_with_its_exit_code(docker: DockerExecutor, tmp_path: Path) -> None:
    work = work_item(shell("echo nope; exit 5"))
    outcome = await execute(docker, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert outcome.exit_code == 5


async def test_stages_of_a_resource_share_the_workspace_volume(docker: DockerExecutor, tmp_path: Path) -> None:
    first = work_item(shell("echo planned > plan.txt"), workspace="resource/vpc")
    second = work_item(shell("cat plan.txt"), workspace="resource/vpc", run_id=first.run_id)
    assert (await execute(docker, first, Workspace.for_work(tmp_path, first), RecordingSink())).ok
    sink = RecordingSink()
    assert (await execute(docker, second, Workspace.for_work(tmp_path, second), sink)).ok
    assert sink.text("stdout") == "planned\n"


async def test_a_timeout_stops_and_removes_the_container(
    docker: DockerExecutor, podman_socket: str, tmp_path: Path
) -> None:
    work = work_item(shell("echo started; sleep 300"), timeout_seconds=2)
    outcome = await execute(docker, work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.timed_out
    assert await _containers(podman_socket, work.run_id) == []


async def test_cancelling_stops_and_removes_the_container(
    docker: DockerExecutor, podman_socket: str, tmp_path: Path
) -> None:
    work = work_item(shell("echo started; sleep 300"))
    sink = RecordingSink()
    task = asyncio.create_task(execute(docker, work, Workspace.for_work(tmp_path, work), sink))
    await sink.wait_for("started", within=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _containers(podman_socket, work.run_id) == []


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
    assert await _containers(podman_socket, work.run_id) == []
