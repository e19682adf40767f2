"""Hardened defaults: a timeout for every activity, locked-down pods and containers, and an agent
whose credentials a process activity cannot read from its parent's environment."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_support import RecordingSink, shell, work_item
from podman_support import IMAGE
from test_agent_on_the_bus import AGENT_MAIN, dispatch, recording

from running_agent import running_agent
from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Workspace, execute, with_default_timeout
from trellis_agent.executors.docker import DockerExecutor, create_body
from trellis_agent.executors.kubernetes_manifests import PodNames, build_pod
from trellis_agent.guard import credentials_in_environment
from trellis_core.bus import Bus, ensure_work_stream
from trellis_core.errors import ConfigError
from trellis_core.events import ActivityCompleted, ActivityFailed
from trellis_core.workflow import ApprovalSpec, ContainerSpec, FunctionSpec

pytest_plugins = ["executor_backends"]  # the `podman_socket` fixture


def test_an_activity_without_a_timeout_gets_the_agents_default_and_its_own_wins() -> None:
    assert with_default_timeout(work_item(), 3600).activity.timeout_seconds == 3600
    assert with_default_timeout(work_item(timeout_seconds=5), 3600).activity.timeout_seconds == 5
    assert with_default_timeout(work_item(), 0).activity.timeout_seconds is None
    assert AgentConfig.from_env({}).default_timeout_seconds == 3600
    with pytest.raises(ConfigError, match=r"TRELLIS_AGENT_DEFAULT_TIMEOUT_SECONDS=-1\.0: must not be negative"):
        AgentConfig.from_env({"TRELLIS_AGENT_DEFAULT_TIMEOUT_SECONDS": "-1"})


def test_an_approval_gets_no_default_timeout_and_a_function_at_least_its_own_until() -> None:
    approval = work_item(ApprovalSpec(), kind="approval")
    assert with_default_timeout(approval, 3600).activity.timeout_seconds is None
    long_function = work_item(FunctionSpec(endpoint="https://f.example", until_seconds=7200), kind="function")
    assert with_default_timeout(long_function, 3600).activity.timeout_seconds == 7200 + 300
    short_function = work_item(FunctionSpec(endpoint="https://f.example", until_seconds=60), kind="function")
    assert with_default_timeout(short_function, 3600).activity.timeout_seconds == 3600


async def test_an_agent_times_out_an_activity_that_sets_no_timeout(bus: Bus, unique: str, tmp_path: Path) -> None:
    work = work_item(shell("echo started; sleep 60"), tenant=unique)
    async with (
        recording(bus, unique) as rec,
        running_agent(bus, tmp_path, tenant=unique, default_timeout_seconds=0.5) as _,
    ):
        await dispatch(bus, work)
        failed = await rec.first(ActivityFailed, work.run_id, within=30)
    assert failed.timed_out
    assert failed.reason == "timed out after 0.5s"


def _pod(config: AgentConfig, timeout: float | None = 600) -> dict[str, object]:
    work = work_item(ContainerSpec(image="example/app:1"), timeout_seconds=timeout)
    return build_pod(work, work.activity.spec, PodNames.for_work(work), Workspace.for_work(Path("/d"), work), config)  # type: ignore[arg-type]


def test_a_pod_drops_every_capability_and_privilege_and_mounts_no_api_token() -> None:
    pod = _pod(AgentConfig.from_env({}, executor="kubernetes", kill_grace_seconds=5))
    spec = pod["spec"]
    assert isinstance(spec, dict)
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] == 600 + 5 + 60
    assert spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def test_a_pod_runs_as_the_configured_user_and_non_root_when_asked() -> None:
    numeric = _pod(AgentConfig.from_env({"TRELLIS_AGENT_CONTAINER_USER": "1000:2000"}, executor="kubernetes"))
    assert numeric["spec"]["securityContext"] == {  # type: ignore[index]
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 1000,
        "runAsGroup": 2000,
        "runAsNonRoot": True,
    }
    asked = _pod(AgentConfig.from_env({"TRELLIS_AGENT_RUN_AS_NON_ROOT": "true"}, executor="kubernetes"), None)
    assert asked["spec"]["securityContext"]["runAsNonRoot"] is True  # type: ignore[index]
    assert "activeDeadlineSeconds" not in asked["spec"]  # type: ignore[operator]


def test_a_pod_given_a_service_account_gets_its_token() -> None:
    pod = _pod(AgentConfig.from_env({}, executor="kubernetes", service_account="deployer"))
    assert pod["spec"]["automountServiceAccountToken"] is True  # type: ignore[index]


def test_a_container_has_no_capabilities_no_new_privileges_and_a_pids_limit() -> None:
    config = AgentConfig.from_env({"TRELLIS_AGENT_CONTAINER_USER": "65534:65534"}, executor="docker")
    work = work_item(ContainerSpec(image=IMAGE, command=("true",)))
    body = create_body(work, work.activity.spec, Workspace.for_work(Path("/d"), work), config, {})  # type: ignore[arg-type]
    assert body["User"] == "65534:65534"
    assert body["HostConfig"]["CapDrop"] == ["ALL"]
    assert body["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert body["HostConfig"]["PidsLimit"] == 1024


@pytest.fixture
async def locked_down(podman_socket: str) -> AsyncIterator[DockerExecutor]:
    config = AgentConfig.from_env(
        {}, executor="docker", docker_socket=podman_socket, default_image=IMAGE, container_user="65534:65534"
    )
    executor = DockerExecutor.from_config(config)
    yield executor
    await executor.close()


async def test_the_busybox_image_runs_locked_down_under_podman(locked_down: DockerExecutor, tmp_path: Path) -> None:
    script = "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"
    work = work_item(ContainerSpec(image=IMAGE, command=("sh", "-c", script)))
    workspace = Workspace.for_work(tmp_path, work)
    workspace.prepare()
    os.chmod(workspace.root, 0o777)
    sink = RecordingSink()
    outcome = await execute(locked_down, work, workspace, sink)
    assert outcome.ok, sink.text()
    out = sink.text("stdout").split()
    assert out == ["65534", "CapEff:", "0000000000000000", "NoNewPrivs:", "1"]


def test_urls_with_credentials_are_found_and_plain_ones_are_not() -> None:
    environ = {
        "TRELLIS_NATS_URL": "nats://agent:s3cret@nats:4222",
        "TRELLIS_DATABASE_URL": "postgresql://db/trellis",
        "TRELLIS_NATS_CREDS_FILE": "/var/run/secrets/nats/agent.creds",
    }
    assert credentials_in_environment(environ) == ["TRELLIS_NATS_URL"]
    assert credentials_in_environment({"TRELLIS_NATS_URL": "nats://nats:4222"}) == []


async def test_a_process_activity_cannot_read_the_agents_credentials_from_its_parents_environment(
    bus: Bus, nats_url: str, unique: str, tmp_path: Path
) -> None:
    secret = f"s3cret-{unique}"
    env = {
        "PATH": os.environ["PATH"],
        # The test server asks for no credentials, so any are accepted: the password is only a marker.
        "TRELLIS_NATS_URL": nats_url.replace("nats://", f"nats://agent:{secret}@"),
        "TRELLIS_AGENT_DATA_DIR": str(tmp_path / "data"),
        "TRELLIS_STREAM_STORAGE": "memory",
        "TRELLIS_LOG_LEVEL": "error",
        "TRELLIS_AGENT_ID": f"{unique}-agent",
    }
    # $PPID is the agent (it starts commands itself, no intermediate); its parent is this test.
    script = (
        "grand=$(awk '/^PPid:/ {print $2}' /proc/$PPID/status); "
        'for p in $PPID $grand; do echo "== $p"; tr "\\0" "\\n" < /proc/$p/environ; done; env'
    )
    work = work_item(shell(script), tenant=unique)
    await ensure_work_stream(bus, unique)
    async with recording(bus, unique) as rec:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", AGENT_MAIN, "agent", "--tenant", unique, "--pool", "default", env=env
        )
        try:
            await dispatch(bus, work)
            done = await rec.first(ActivityCompleted, work.run_id, within=30)
            await rec.wait(lambda: f"== {os.getpid()}" in "".join(c.data for c in rec.chunks))
        finally:
            proc.terminate()
            async with asyncio.timeout(30):
                await proc.wait()
    seen = "".join(c.data for c in rec.chunks)
    assert done.exit_code == 0
    assert f"== {proc.pid}\n" in seen  # the agent's own start-up environment was read ...
    assert f"TRELLIS_AGENT_ID={unique}-agent" in seen
    assert "TRELLIS_NATS_URL=" in seen  # ... and still names the variable
    assert secret not in seen
