"""The kubernetes executor drives the real kubernetes-asyncio client against kmock's emulator.

The test plays the kubelet: it waits for the pod, then sets its status and serves its logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
from agent_support import RecordingSink, work_item
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient, ApiException, Configuration

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Outcome, Workspace, execute
from trellis_agent.executors.function import FunctionExecutor
from trellis_agent.executors.http import HttpExecutor
from trellis_agent.executors.kubernetes import KubernetesExecutor
from trellis_agent.executors.kubernetes_manifests import Pending, pod_state
from trellis_core.events import WorkItem
from trellis_core.workflow import ContainerSpec, FunctionSpec

NS = "trellis"


class Kubelet:
    """What a node would do to the pods of one test, through the API like a kubelet."""

    def __init__(self, emulator: kmock.KubernetesEmulator, core: Any) -> None:
        self.emulator = emulator
        self.core = core

    async def next_pod(self, ignore: frozenset[str] = frozenset()) -> Any:
        """Watch the namespace's pods (kmock wants `watch=true`, the client sends `True`)."""
        url = f"{str(self.emulator.url).rstrip('/')}/api/v1/namespaces/{NS}/pods?watch=true"
        async with asyncio.timeout(10), aiohttp.ClientSession() as session, session.get(url) as resp:
            async for line in resp.content:
                event = json.loads(line) if line.strip() else {}
                if event.get("type") == "ADDED" and event["object"]["metadata"]["name"] not in ignore:
                    return await self.core.read_namespaced_pod(event["object"]["metadata"]["name"], NS)
        raise AssertionError("no pod was created")

    async def set_status(self, pod: str, status: dict[str, Any]) -> None:
        await self.core.patch_namespaced_pod_status(pod, NS, {"status": status})

    async def run(self, pod: str) -> None:
        await self.set_status(pod, {"phase": "Running", "containerStatuses": [_container({"running": {}})]})

    async def terminate(self, pod: str, exit_code: int, message: str = "") -> None:
        terminated = {
            "exitCode": exit_code,
            "message": message,
            "reason": "Completed" if exit_code == 0 else "Error",
        }
        phase = "Succeeded" if exit_code == 0 else "Failed"
        await self.set_status(pod, {"phase": phase, "containerStatuses": [_container({"terminated": terminated})]})

    def serve_logs(self, *parts: Any) -> None:
        self.emulator["get", kmock.resource("v1/pods"), kmock.subresource("log")] << parts

    async def exists(self, read: Any, name: str) -> bool:
        try:
            await read(name, NS)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


def _container(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "activity",
        "image": "busybox",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": state,
    }


@pytest.fixture
async def cluster(
    function_server: tuple[int, list[dict[str, Any]]],
) -> AsyncIterator[tuple[Kubelet, KubernetesExecutor]]:
    function_port = function_server[0]  # where a function "pod" answers (see function_server)
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        configuration = Configuration(host=str(emulator.url).rstrip("/"))
        config = AgentConfig.from_env(
            {},
            executor="kubernetes",
            namespace=NS,
            pod_poll_seconds=0.02,
            unschedulable_seconds=0.0,
            function_port=function_port,
            function_ready_seconds=5.0,
        )
        async with ApiClient(configuration) as kubelet_api:
            executor = KubernetesExecutor(ApiClient(configuration), namespace=NS, config=config)
            try:
                yield Kubelet(emulator, client.CoreV1Api(kubelet_api)), executor
            finally:
                await executor.close()


def _work(**kw: Any) -> WorkItem:
    spec = ContainerSpec(
        image="example/tool:1",
        command=("sh", "-c"),
        args=("echo hi",),
        env={"REGION": "eu-west-1", "DB_PASSWORD": "pa55word"},
        cpu_limit_milli=500,
        memory_limit_mb=256,
        files={"conf/app.ini": base64.b64encode(b"x=1").decode()},
    )
    return work_item(spec, sensitive=("DB_PASSWORD",), workspace="resource/app", **kw)


async def _start(executor: KubernetesExecutor, work: WorkItem, tmp_path: Path, sink: RecordingSink) -> Any:
    return asyncio.create_task(execute(executor, work, Workspace.for_work(tmp_path, work), sink))


async def test_a_pod_that_succeeds_streams_its_logs_and_returns_its_termination_message_as_outputs(
    cluster: tuple[Kubelet, KubernetesExecutor], tmp_path: Path
) -> None:
    kubelet, executor = cluster
    released = asyncio.Event()
    kubelet.serve_logs(b"first line\n", released.wait, b"second line\n")
    work = _work()
    sink = RecordingSink()
    task = await _start(executor, work, tmp_path, sink)
    pod = await kubelet.next_pod()
    await kubelet.run(pod.metadata.name)
    await sink.wait_for("first line")  # followed while the pod still runs
    released.set()
    await kubelet.terminate(pod.metadata.name, 0, json.dumps({"url": "https://app.example"}))
    outcome = await asyncio.wait_for(task, 10)
    assert outcome == Outcome.succeeded({"url": "https://app.example"}, exit_code=0)
    assert "second line" in sink.text("stdout")
    assert not await kubelet.exists(kubelet.core.read_namespaced_pod, pod.metadata.name)
    assert not await kubelet.exists(kubelet.core.read_namespaced_secret, f"{pod.metadata.name}-env")


async def test_the_pod_carries_labels_limits_env_from_a_secret_and_the_workspace_claim(
    cluster: tuple[Kubelet, KubernetesExecutor], tmp_path: Path
) -> None:
    kubelet, executor = cluster
    kubelet.serve_logs(b"")
    work = _work()
    task = await _start(executor, work, tmp_path, RecordingSink())
    pod = await kubelet.next_pod()
    name = pod.metadata.name
    secret = await kubelet.core.read_namespaced_secret(f"{name}-env", NS)
    await kubelet.terminate(name, 0)
    assert (await asyncio.wait_for(task, 10)).ok

    labels = pod.metadata.labels
    assert labels["trellis.dev/tenant"] == "acme"
    assert labels["trellis.dev/run"] == work.run_id
    assert labels["trellis.dev/activity"] == "resource.app.task.build"
    container = pod.spec.containers[0]
    assert container.image == "example/tool:1"
    assert container.command == ["sh", "-c"]
    assert container.args == ["echo hi"]
    assert container.resources.limits == {"cpu": "500m", "memory": "256Mi"}
    env = {e.name: e for e in container.env}
    assert env["REGION"].value == "eu-west-1"
    assert env["DB_PASSWORD"].value is None
    assert env["DB_PASSWORD"].value_from.secret_key_ref.name == f"{name}-env"
    assert env["TRELLIS_OUTPUTS"].value == container.termination_message_path
    assert base64.b64decode(secret.data["env.DB_PASSWORD"]) == b"pa55word"
    assert "pa55word" not in json.dumps(client.ApiClient().sanitize_for_serialization(pod))
    claim = pod.spec.volumes[0].persistent_volume_claim.claim_name
    assert claim == Workspace.for_work(tmp_path, work).volume_name
    assert await kubelet.exists(kubelet.core.read_namespaced_persistent_volume_claim, claim)
    mounts = {m.mount_path: m for m in container.volume_mounts}
    assert mounts["/workspace/conf/app.ini"].sub_path == "file.0"


async def test_an_unschedulable_pod_fails_with_the_schedulers_reason(
    cluster: tuple[Kubelet, KubernetesExecutor], tmp_path: Path
) -> None:
    kubelet, executor = cluster
    task = await _start(executor, _work(), tmp_path, RecordingSink())
    pod = await kubelet.next_pod()
    why = "0/3 nodes are available: 3 Insufficient cpu."
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}
    await kubelet.set_status(pod.metadata.name, {"phase": "Pending", "conditions": [condition]})
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.status == "failed"
    assert outcome.reason == f"Unschedulable: {why}"
    assert not await kubelet.exists(kubelet.core.read_namespaced_pod, pod.metadata.name)


async def test_an_image_that_cannot_be_pulled_fails_with_the_kubelets_reason(
    cluster: tuple[Kubelet, KubernetesExecutor], tmp_path: Path
) -> None:
    kubelet, executor = cluster
    task = await _start(executor, _work(), tmp_path, RecordingSink())
    pod = await kubelet.next_pod()
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "example/tool:1"'}
    await kubelet.set_status(
        pod.metadata.name, {"phase": "Pending", "containerStatuses": [_container({"waiting": waiting})]}
    )
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.status == "failed"
    assert outcome.reason == 'ImagePullBackOff: Back-off pulling image "example/tool:1"'
    assert not outcome.retryable


def test_a_pod_without_status_is_pending() -> None:
    assert pod_state(client.V1Pod(status=None)) == Pending()


@pytest.fixture
async def function_server() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """Plays the function's container: the kubelet reports the pod at 127.0.0.1."""
    calls: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(await request.json())
        if len(calls) < 2:
            return web.json_response({"status": "again", "data": {"n": len(calls)}})
        return web.json_response({"status": "done", "outputs": {"rollout": "complete"}})

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1], calls  # type: ignore[union-attr]
    await runner.cleanup()


async def test_a_function_image_runs_as_a_pod_that_is_polled_then_deleted(
    cluster: tuple[Kubelet, KubernetesExecutor], function_server: tuple[int, list[dict[str, Any]]], tmp_path: Path
) -> None:
    kubelet, executor = cluster
    port, calls = function_server
    http = HttpExecutor()
    work = work_item(FunctionSpec(image="example/rollout:1", repeat_seconds=0.01), kind="function")
    task = asyncio.create_task(
        execute(FunctionExecutor(http, executor), work, Workspace.for_work(tmp_path, work), RecordingSink())
    )
    try:
        pod = await kubelet.next_pod()
        assert pod.spec.containers[0].ports[0].container_port == port
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["PORT"] == str(port)
        await kubelet.set_status(
            pod.metadata.name,
            {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [_container({"running": {}})]},
        )
        outcome = await asyncio.wait_for(task, 10)
    finally:
        await http.close()
    assert outcome.outputs == {"rollout": "complete"}
    assert [c["previous"] for c in calls] == [{}, {"n": 1}]
    assert not await kubelet.exists(kubelet.core.read_namespaced_pod, pod.metadata.name)


async def test_finished_pods_can_be_kept_but_a_cancelled_one_is_always_deleted(
    cluster: tuple[Kubelet, KubernetesExecutor], tmp_path: Path
) -> None:
    kubelet, _ = cluster
    config = AgentConfig.from_env({}, executor="kubernetes", pod_poll_seconds=0.02, delete_pods=False)
    api = ApiClient(Configuration(host=str(kubelet.emulator.url).rstrip("/")))
    executor = KubernetesExecutor(api, namespace=NS, config=config)
    kubelet.serve_logs(b"")
    kept = _work()
    finished = asyncio.create_task(execute(executor, kept, Workspace.for_work(tmp_path, kept), RecordingSink()))
    pod = await kubelet.next_pod()
    await kubelet.terminate(pod.metadata.name, 0)
    assert (await asyncio.wait_for(finished, 10)).ok
    assert await kubelet.exists(kubelet.core.read_namespaced_pod, pod.metadata.name)
    assert not await kubelet.exists(kubelet.core.read_namespaced_secret, f"{pod.metadata.name}-env")

    cancelled_work = _work()
    cancelled = asyncio.create_task(
        execute(executor, cancelled_work, Workspace.for_work(tmp_path, cancelled_work), RecordingSink())
    )
    second = await kubelet.next_pod(ignore=frozenset({pod.metadata.name}))  # the kept one is replayed
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await executor.close()
    assert not await kubelet.exists(kubelet.core.read_namespaced_pod, second.metadata.name)


async def test_an_unreachable_api_server_fails_the_activity_retryably(tmp_path: Path) -> None:
    config = AgentConfig.from_env({}, executor="kubernetes")
    executor = KubernetesExecutor(ApiClient(Configuration(host="http://127.0.0.1:1")), namespace=NS, config=config)
    work = _work()
    try:
        outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), RecordingSink())
    finally:
        await executor.close()
    assert outcome.status == "failed"
    assert outcome.retryable
    assert "cannot reach the Kubernetes API" in outcome.reason


async def test_the_pods_secret_is_deleted_when_the_pod_fails_times_out_or_is_cancelled(
    cluster: tuple[Kubelet, KubernetesExecutor], tmp_path: Path
) -> None:
    """The Secret holds the opened sensitive values: it lives only as long as the pod runs."""
    kubelet, executor = cluster
    kubelet.serve_logs(b"")
    seen: set[str] = set()

    async def started(work: WorkItem) -> tuple[asyncio.Task[Outcome], str]:
        task = await _start(executor, work, tmp_path, RecordingSink())
        pod = await kubelet.next_pod(ignore=frozenset(seen))
        name = pod.metadata.name
        seen.add(name)
        secret = await kubelet.core.read_namespaced_secret(f"{name}-env", NS)  # there while the pod runs
        assert base64.b64decode(secret.data["env.DB_PASSWORD"]) == b"pa55word"
        await kubelet.run(name)
        return task, name

    failing, name = await started(_work())
    await kubelet.terminate(name, 3)
    assert (await asyncio.wait_for(failing, 10)).exit_code == 3
    assert not await kubelet.exists(kubelet.core.read_namespaced_secret, f"{name}-env")

    # Long enough that seeing the pod, reading its Secret and starting it all happen before the
    # deadline even on a loaded machine (0.3 s raced them in CI and the Secret was already gone).
    timing_out, name = await started(_work(timeout_seconds=3))
    outcome = await asyncio.wait_for(timing_out, 10)
    assert outcome.timed_out
    assert not await kubelet.exists(kubelet.core.read_namespaced_secret, f"{name}-env")

    cancelled, name = await started(_work())
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not await kubelet.exists(kubelet.core.read_namespaced_secret, f"{name}-env")
