"""What only the docker executor does (the rest is in test_executor_contract.py).

Real containers through Podman's Docker-compatible API: the `podman_socket` fixture
(executor_backends.py) skips without Podman, or fails where TRELLIS_REQUIRE_PODMAN=1.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import RecordingSink, wait_for_file, work_item
from podman_support import FUNCTION_IMAGE, IMAGE, containers_of_run

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.docker import (
    SECRETS_MOUNT,
    DockerExecutor,
    secret_files,
    split_image,
    split_sensitive_env,
    wrap_with_secrets,
)
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


SECRET_LINES = "s3cret value with spaces\nand a second line\n"


async def test_sensitive_variables_reach_the_command_from_files_never_as_container_env(
    docker: DockerExecutor, podman_socket: str, tmp_path: Path
) -> None:
    script = (
        f"{wait_for_file(Path('/workspace/go'))}; "
        'printf "%s" "$PW" > /workspace/pw-seen; printf \'{"plain": "%s"}\' "$PLAIN" > "$TRELLIS_OUTPUTS"'
    )
    spec = ContainerSpec(image=IMAGE, command=("sh", "-c", script), env={"PW": SECRET_LINES, "PLAIN": "visible"})
    work = work_item(spec, sensitive=("PW",))
    workspace = Workspace.for_work(tmp_path, work)
    running = asyncio.create_task(execute(docker, work, workspace, RecordingSink()))
    try:
        async with asyncio.timeout(60):
            while not (found := await containers_of_run(podman_socket, work.run_id)):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        info = await inspect_container(podman_socket, found[0]["Id"])
        env = info["Config"]["Env"] or []
        assert "PLAIN=visible" in env
        assert not any(e.startswith("PW=") or "s3cret" in e for e in env), env
        assert "s3cret" not in json.dumps(info)
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts[SECRETS_MOUNT]["RW"] is False
        secrets_dir = Path(mounts[SECRETS_MOUNT]["Source"])
        assert mode_of(secrets_dir) == 0o700
        assert mode_of(secrets_dir / "PW") == 0o600
        (workspace.root / "go").touch()
        outcome = await asyncio.wait_for(running, 60)
    finally:
        running.cancel()
    assert outcome.ok, outcome.reason
    assert (workspace.root / "pw-seen").read_text() == SECRET_LINES  # trailing newline kept
    assert outcome.outputs == {"plain": "visible"}
    assert not await asyncio.to_thread(secrets_dir.exists)


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def inspect_container(socket_path: str, cid: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as session,
        session.get(f"http://docker/v1.41/containers/{cid}/json") as resp,
    ):
        return dict(await resp.json())


def test_the_secrets_wrapper_exports_each_file_and_execs_the_command(tmp_path: Path) -> None:
    """The wrapper script itself, under the host's sh (the container test needs Podman)."""
    env = {"PW": SECRET_LINES, "TOKEN": "t0k3n", "NOT-A-NAME": "x"}
    plain, hidden = split_sensitive_env({**env, "PLAIN": "p"}, set(env))
    assert plain == {"PLAIN": "p"}
    assert hidden == env
    with secret_files(hidden) as directory:
        assert directory is not None
        assert directory.stat().st_mode & 0o777 == 0o700
        assert all((directory / n).stat().st_mode & 0o777 == 0o600 for n in ("PW", "TOKEN"))
        body: dict[str, Any] = {"HostConfig": {"Binds": []}}
        wrap_with_secrets(body, directory, ["sh", "-c", 'printf "%s|%s|%s" "$PW" "$TOKEN" "$1"', "arg0", "one"])
        assert body["HostConfig"]["Binds"] == [f"{directory}:{SECRETS_MOUNT}:ro"]
        script = body["Entrypoint"][2].replace(SECRETS_MOUNT, str(directory))
        done = subprocess.run(
            ["sh", "-c", script, *body["Entrypoint"][3:], *body["Cmd"]],
            capture_output=True, text=True, check=False, timeout=30, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{SECRET_LINES}|t0k3n|one"
    assert not directory.exists()
