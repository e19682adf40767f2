"""The docker executor without a container engine behind its socket (no Podman needed)."""

from __future__ import annotations

from pathlib import Path

from agent_support import RecordingSink, shell, work_item

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.docker import DockerExecutor


async def test_a_missing_engine_socket_fails_the_activity_retryably(tmp_path: Path) -> None:
    config = AgentConfig.from_env({}, executor="docker", docker_socket=str(tmp_path / "no.sock"))
    executor = DockerExecutor.from_config(config)
    work = work_item(shell("true"))
    try:
        outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    finally:
        await executor.close()
    assert outcome.status == "failed"
    assert outcome.retryable
    assert "cannot reach the container engine" in outcome.reason
