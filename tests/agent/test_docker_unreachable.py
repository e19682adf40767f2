"""The docker executor without a container engine behind it, and what happens to its tests then."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_support import RecordingSink, shell, work_item
from podman_support import REQUIRE_PODMAN, require_podman_or_skip

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


def test_without_podman_the_docker_tests_skip_unless_ci_requires_podman(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_PODMAN, raising=False)
    with pytest.raises(pytest.skip.Exception, match="podman is not installed"):
        require_podman_or_skip("podman is not installed")
    monkeypatch.setenv(REQUIRE_PODMAN, "1")
    with pytest.raises(pytest.fail.Exception, match="TRELLIS_REQUIRE_PODMAN=1 but podman is not installed"):
        require_podman_or_skip("podman is not installed")
