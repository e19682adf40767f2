"""Every executor backend as a fixture for the contract suite (test_executor_contract.py).

A backend says how to run work on it and how the test checks that it cleaned up. A new
backend adds one fixture here named `<name>_backend`, and its name to COMMAND_BACKENDS (it
runs container activities) or ENDPOINT_BACKENDS (it calls an HTTP endpoint) in the contract.
Test modules load this one with `pytest_plugins = ["executor_backends"]` and do not import it
(a plugin imported first loses pytest's assertion rewriting).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import kmock
import pytest
from agent_support import RecordingSink, environ_path, read_pid, wait_until_gone, work_item
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient, ApiException, Configuration
from local_kubelet import LocalKubelet
from podman_support import IMAGE, PodmanUnusable, containers_of_run, missing, podman_service, require_podman_or_skip

from trellis_agent.config import AgentConfig
from trellis_agent.egress import EgressPolicy
from trellis_agent.executors.base import Executor, Workspace
from trellis_agent.executors.docker import DockerExecutor
from trellis_agent.executors.function import FunctionExecutor
from trellis_agent.executors.http import HttpExecutor
from trellis_agent.executors.kubernetes import KubernetesExecutor
from trellis_agent.executors.kubernetes_manifests import PodNames
from trellis_agent.executors.process import ProcessExecutor
from trellis_core.events import WorkItem
from trellis_core.workflow import ContainerSpec, FunctionSpec, HttpSpec

NAMESPACE = "trellis"

# The servers these tests call listen on loopback, which the egress policy refuses by default.
LOCAL_SERVERS = EgressPolicy.parse(["127.0.0.1/32"])


class Backend(Protocol):
    """What every contract test needs of a backend."""

    name: str
    executor: Executor
    timeout_seconds: float  # long enough for the work to start, as the timeout test checks

    def hanging(self, **kw: Any) -> WorkItem:
        """Work that runs until it is stopped."""
        ...

    async def wait_started(self, sink: RecordingSink) -> None:
        """Return once the hanging work runs (raises TimeoutError if it does not)."""
        ...

    async def assert_cleaned_up(self, work: WorkItem, workspace: Workspace) -> None:
        """Fail unless nothing the attempt started is left running."""
        ...

    def leaking(self, secret: str) -> WorkItem:
        """Work whose log shows `token=<secret>`, with the secret named sensitive."""
        ...


@dataclass
class CommandBackend:
    """A backend that runs container activities: `sh -c script` in the resource's workspace."""

    name: str
    executor: Executor
    timeout_seconds: float
    image: str
    check_cleaned_up: Callable[[WorkItem, Workspace], Awaitable[None]]
    hang_script: str = "echo started; sleep 300"

    def command(
        self, script: str, *, success_condition: str = "", env: dict[str, str] | None = None, **kw: Any
    ) -> WorkItem:
        """A container activity running `sh -c script`; `kw` goes to agent_support.work_item."""
        spec = ContainerSpec(
            image=self.image, command=("sh", "-c", script), env=env or {}, success_condition=success_condition
        )
        return work_item(spec, **kw)

    def hanging(self, **kw: Any) -> WorkItem:
        return self.command(self.hang_script, **kw)

    async def wait_started(self, sink: RecordingSink) -> None:
        await sink.wait_for("started", within=30)

    async def assert_cleaned_up(self, work: WorkItem, workspace: Workspace) -> None:
        await self.check_cleaned_up(work, workspace)

    def leaking(self, secret: str) -> WorkItem:
        script = 'echo "token=$API_TOKEN"; echo "$API_TOKEN" >&2; cat "$TRELLIS_INPUTS"'
        return self.command(
            script, env={"API_TOKEN": secret}, inputs={"password": f"{secret}-pw"}, sensitive=("API_TOKEN", "password")
        )


@pytest.fixture(scope="session")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Podman service for the session's docker tests (see podman_support.py)."""
    if reason := missing():
        require_podman_or_skip(reason)
    try:
        with podman_service(tmp_path_factory.mktemp("podman")) as sock:
            yield sock
    except PodmanUnusable as exc:  # raised before the service starts, never at teardown
        require_podman_or_skip(str(exc))


@pytest.fixture
def process_backend() -> CommandBackend:
    async def group_killed(work: WorkItem, workspace: Workspace) -> None:
        # The hanging script's grandchild: only a kill of the whole process group reaches it.
        assert await wait_until_gone(read_pid(workspace.root / "grandchild.pid"))

    return CommandBackend(
        name="process",
        executor=ProcessExecutor(kill_grace_seconds=0.5, environ=environ_path()),
        timeout_seconds=1.0,
        image="",
        check_cleaned_up=group_killed,
        hang_script="sleep 300 & echo $! > grandchild.pid; echo started; wait",
    )


@pytest.fixture
async def docker_backend(podman_socket: str) -> AsyncIterator[CommandBackend]:
    config = AgentConfig.from_env(
        {}, executor="docker", docker_socket=podman_socket, default_image=IMAGE, kill_grace_seconds=1
    )
    executor = DockerExecutor.from_config(config)

    async def container_removed(work: WorkItem, workspace: Workspace) -> None:
        assert await containers_of_run(podman_socket, work.run_id) == []

    yield CommandBackend("docker", executor, 5.0, IMAGE, container_removed)
    await executor.close()


@pytest.fixture
async def kubernetes_backend(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CommandBackend]:
    """kmock's emulator with a LocalKubelet that runs each pod's command as a local process."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        configuration = Configuration(host=str(emulator.url).rstrip("/"))
        config = AgentConfig.from_env(
            {}, executor="kubernetes", namespace=NAMESPACE, pod_poll_seconds=0.02, kill_grace_seconds=1
        )
        async with (
            ApiClient(configuration) as kubelet_api,
            LocalKubelet(emulator, client.CoreV1Api(kubelet_api), NAMESPACE, tmp_path_factory.mktemp("node")),
        ):
            core = client.CoreV1Api(kubelet_api)

            async def pod_deleted(work: WorkItem, workspace: Workspace) -> None:
                names = PodNames.for_work(work)
                assert not await _exists(core.read_namespaced_pod, names.pod)
                assert not await _exists(core.read_namespaced_secret, names.secret)

            executor = KubernetesExecutor(ApiClient(configuration), namespace=NAMESPACE, config=config)
            try:
                yield CommandBackend("kubernetes", executor, 1.0, "example/tool:1", pod_deleted)
            finally:
                await executor.close()


async def _exists(read: Any, name: str) -> bool:
    try:
        await read(name, NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


class Endpoint:
    """A local HTTP server: `/hang` never answers and notes when its caller goes away."""

    def __init__(self) -> None:
        self.url = ""
        self.entered = asyncio.Event()
        self.abandoned = asyncio.Event()
        self.release = asyncio.Event()  # lets a hanging handler end at teardown

    async def hang(self, request: web.Request) -> web.Response:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:  # the client closed the connection
            self.abandoned.set()
            raise
        return web.Response()

    async def echo_token(self, request: web.Request) -> web.Response:
        return web.Response(text=f"token={request.headers['X-Token']}\n")

    async def refuse_token(self, request: web.Request) -> web.Response:
        token = (await request.json())["inputs"]["token"]
        return web.json_response({"status": "failed", "message": f"token={token} is not allowed"})


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    server = Endpoint()
    app = web.Application()
    app.router.add_route("*", "/hang", server.hang)
    app.router.add_get("/echo-token", server.echo_token)
    app.router.add_post("/fn/refuse-token", server.refuse_token)
    runner = web.AppRunner(app, handler_cancellation=True)  # a dropped request cancels its handler
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield server
    server.release.set()
    await runner.cleanup()


@dataclass
class EndpointBackend:
    """A backend that calls an HTTP endpoint; cleaning up means dropping the call in flight."""

    name: str
    executor: Executor
    server: Endpoint
    timeout_seconds: float = 0.5

    def hanging(self, **kw: Any) -> WorkItem:
        url = f"{self.server.url}/hang"
        if self.name == "http":
            return work_item(HttpSpec(url=url, method="GET"), kind="http", **kw)
        return work_item(FunctionSpec(endpoint=url, repeat_seconds=0.01), kind="function", **kw)

    async def wait_started(self, sink: RecordingSink) -> None:
        async with asyncio.timeout(10):
            await self.server.entered.wait()

    async def assert_cleaned_up(self, work: WorkItem, workspace: Workspace) -> None:
        async with asyncio.timeout(10):
            await self.server.abandoned.wait()

    def leaking(self, secret: str) -> WorkItem:
        if self.name == "http":
            spec = HttpSpec(url=f"{self.server.url}/echo-token", method="GET", headers={"X-Token": secret})
            return work_item(spec, kind="http", sensitive=("X-Token",))
        refuse = FunctionSpec(endpoint=f"{self.server.url}/fn/refuse-token", repeat_seconds=0.01)
        return work_item(refuse, kind="function", inputs={"token": secret}, sensitive=("token",))


@pytest.fixture
async def http_backend(endpoint: Endpoint) -> AsyncIterator[EndpointBackend]:
    executor = HttpExecutor(LOCAL_SERVERS)
    yield EndpointBackend("http", executor, endpoint)
    await executor.close()


@pytest.fixture
async def function_backend(endpoint: Endpoint) -> AsyncIterator[EndpointBackend]:
    http = HttpExecutor(LOCAL_SERVERS)
    yield EndpointBackend("function", FunctionExecutor(http), endpoint)
    await http.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """The backend named by the test's parameter (`indirect=True`)."""
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


@pytest.fixture
def command_backend(request: pytest.FixtureRequest) -> CommandBackend:
    found: CommandBackend = request.getfixturevalue(f"{request.param}_backend")
    return found
