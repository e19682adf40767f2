"""The `docker` backend: the Docker Engine HTTP API over its unix socket (Podman's works too).

Per activity: pull the image if it is missing, create a container with the workspace
bind-mounted at the container workspace, attach to it, start it, stream its (multiplexed)
output, wait for its exit code, read `$TRELLIS_OUTPUTS` from the workspace, remove it. On cancel or timeout
the container is stopped (SIGTERM, then SIGKILL after the grace period) and removed.
A function image is served the same way, for as long as the function is polled.

Sensitive variables (named in `Activity.sensitive`, or whose value held a sealed token: the
agent adds those names when it opens the tokens) are not passed as container Env, which
`docker inspect` shows to anyone who may inspect: each goes to a file of its own (0600) in a
private directory (0700) of the agent, bind-mounted read-only at SECRETS_MOUNT, and a small
`/bin/sh` wrapper exports them and then execs the command (the image's own entrypoint and
command when the spec names none). Limitations: the image must have `/bin/sh`; a name that is
not a shell identifier is not exported (its file is there to read); the directory is removed
with the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import (
    LineBuffer,
    Outcome,
    Sink,
    Workspace,
    attempt_files,
    forget_sensitive_inputs,
    function_container,
    read_outputs,
    trellis_env,
    wait_until_listening,
    write_spec_files,
)
from trellis_agent.executors.process import finish
from trellis_agent.sink import LogStream
from trellis_core.errors import TrellisError
from trellis_core.events import WorkItem
from trellis_core.workflow import ContainerSpec

API_VERSION = "v1.41"
API_TIMEOUT_SECONDS = 60.0  # any one short API call
_STREAMS: dict[int, LogStream] = {1: "stdout", 2: "stderr"}
SECRETS_MOUNT = "/run/trellis/secrets"
# $0 is a label; "$@" the command. `$(cat; printf x)` then `${v%x}` keeps trailing newlines.
SECRETS_WRAPPER = (
    f'for f in {SECRETS_MOUNT}/*; do [ -f "$f" ] || continue; n="${{f##*/}}"; '
    'case "$n" in *[!A-Za-z0-9_]*|[0-9]*) continue;; esac; '
    'v="$(cat "$f"; printf x)"; export "$n=${v%x}"; done; unset f n v; exec "$@"'
)


def split_sensitive_env(env: dict[str, str], sensitive: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(the variables passed as Env, the sensitive ones that go to files)."""
    plain = {k: v for k, v in env.items() if k not in sensitive}
    hidden = {k: v for k, v in env.items() if k in sensitive}
    return plain, hidden


@contextlib.contextmanager
def secret_files(values: dict[str, str]) -> Iterator[Path | None]:
    """A private directory (0700) holding one file (0600) a value, removed on the way out;
    None when there is nothing to hide."""
    if not values:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="trellis-secrets-"))  # 0700
    try:
        for name, value in values.items():
            if "/" in name or name in ("", ".", ".."):
                continue  # not a file name; it is not a variable name a shell could export either
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(value)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def wrap_with_secrets(body: dict[str, Any], directory: Path, argv: list[str]) -> None:
    """Mount `directory` read-only at SECRETS_MOUNT and run `argv` through SECRETS_WRAPPER."""
    body["HostConfig"]["Binds"].append(f"{directory}:{SECRETS_MOUNT}:ro")
    body["Entrypoint"] = ["/bin/sh", "-c", SECRETS_WRAPPER, "trellis-secrets"]
    body["Cmd"] = argv


class DockerError(TrellisError):
    """The Docker Engine API answered with an error status; `message` is its own text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def container_name(work: WorkItem, suffix: str = "") -> str:
    digest = hashlib.sha256(f"{work.run_id}/{work.activity.id}/{work.attempt}".encode()).hexdigest()[:16]
    return f"trellis-{digest}{suffix}"


def split_image(image: str) -> tuple[str, str]:
    """`repo[:tag]` (a registry port is not a tag) into the pull API's fromImage and tag."""
    if "@" in image:
        return image, ""
    repo, _, tag = image.rpartition(":")
    if not repo or "/" in tag:
        return image, "latest"
    return repo, tag


def create_body(
    work: WorkItem, spec: ContainerSpec, workspace: Workspace, config: AgentConfig, env: dict[str, str]
) -> dict[str, Any]:
    """`env` is what the container gets as Env: the caller has taken the sensitive ones out."""
    """The container-create request of one activity attempt (a pure function of its inputs)."""
    root = config.container_workspace
    host: dict[str, Any] = {
        "Binds": [f"{workspace.root}:{root}"],
        "AutoRemove": False,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
    }
    if config.pids_limit:
        host["PidsLimit"] = config.pids_limit
    if spec.cpu_limit_milli:
        host["NanoCpus"] = spec.cpu_limit_milli * 1_000_000
    if spec.memory_limit_mb:
        host["Memory"] = spec.memory_limit_mb * 1024 * 1024
    body: dict[str, Any] = {
        "Image": spec.image or config.default_image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "WorkingDir": spec.working_dir or root,
        "Labels": {
            "app.kubernetes.io/managed-by": "trellis-agent",
            "trellis.dev/tenant": work.tenant,
            "trellis.dev/run": work.run_id,
            "trellis.dev/activity": work.activity.id,
            "trellis.dev/attempt": str(work.attempt),
        },
        "Tty": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "HostConfig": host,
    }
    if config.container_user:
        body["User"] = config.container_user
    if spec.command:
        body["Entrypoint"] = list(spec.command)
    if spec.args:
        body["Cmd"] = list(spec.args)
    return body


class DockerExecutor:
    def __init__(self, session: aiohttp.ClientSession, config: AgentConfig) -> None:
        self._session = session
        self._config = config
        self._base = f"http://docker/{API_VERSION}"

    @classmethod
    def from_config(cls, config: AgentConfig) -> DockerExecutor:
        connector = aiohttp.UnixConnector(path=config.docker_socket)
        # No session-wide limit: following logs and waiting last as long as the activity.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=API_TIMEOUT_SECONDS)
        return cls(aiohttp.ClientSession(connector=connector, timeout=timeout), config)

    async def close(self) -> None:
        await self._session.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200, 201, 204),
        limit_seconds: float | None = API_TIMEOUT_SECONDS,
        **kw: Any,
    ) -> Any:
        limit = aiohttp.ClientTimeout(total=limit_seconds, sock_connect=API_TIMEOUT_SECONDS)
        async with self._session.request(method, f"{self._base}{path}", timeout=limit, **kw) as resp:
            text = await resp.text()
            if resp.status not in ok:
                try:
                    message = json.loads(text).get("message", text)
                except (ValueError, AttributeError):
                    message = text
                raise DockerError(resp.status, str(message).strip())
            return json.loads(text) if text.strip() and resp.content_type == "application/json" else text

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        spec = work.activity.spec
        if not isinstance(spec, ContainerSpec):
            return Outcome.failed(
                f"the docker executor runs container activities, not {type(spec).__name__}", retryable=False
            )
        files = attempt_files(work, workspace)
        if isinstance(files, Outcome):
            await sink.system(files.reason)
            return files
        problem = write_spec_files(spec.files, workspace, self._config.container_workspace)
        if problem is not None:
            await sink.system(problem.reason)
            return problem
        root = self._config.container_workspace
        env, hidden = split_sensitive_env(dict(spec.env), set(work.activity.sensitive))
        env.update(trellis_env(work, f"{root}/{files.inputs_rel}", f"{root}/{files.outputs_rel}"))
        env["TRELLIS_WORKSPACE"] = root
        try:
            body = create_body(work, spec, workspace, self._config, env)
            with secret_files(hidden) as directory:
                return await self._run_container(work, spec, workspace, files, body, directory, sink)
        except DockerError as exc:
            await sink.system(f"docker: {exc.message}")
            return Outcome.failed(f"docker refused: {exc}", retryable=exc.status >= 500 and exc.status != 501)
        except aiohttp.ClientError as exc:
            reason = f"cannot reach the container engine at {self._config.docker_socket}: {exc}"
            await sink.system(reason)
            return Outcome.failed(reason)
        finally:
            forget_sensitive_inputs(work, workspace, files)

    async def _run_container(
        self,
        work: WorkItem,
        spec: ContainerSpec,
        workspace: Workspace,
        files: Any,
        body: dict[str, Any],
        secrets: Path | None,
        sink: Sink,
    ) -> Outcome:
        if secrets is not None:
            argv = await self._argv(body["Image"], spec, sink)
            if not argv:
                return Outcome.failed("the container has sensitive variables but no command to run", retryable=False)
            wrap_with_secrets(body, secrets, argv)
        async with self._container(work, body, sink) as cid:
            await self._attach_and_start(cid, container_name(work), body, sink)
            exit_code = await self._exit_code(cid)
        return finish(exit_code, spec.success_condition, read_outputs(workspace, files))

    async def _argv(self, image: str, spec: ContainerSpec, sink: Sink) -> list[str]:
        """What the container would run: the spec's command and args, the image's entrypoint
        and command filling in what the spec leaves out (Docker's own rules)."""
        if spec.command:
            return [*spec.command, *spec.args]
        await self._ensure_image(image, sink)
        config = (await self._call("GET", f"/images/{image}/json")).get("Config") or {}
        entrypoint = list(config.get("Entrypoint") or [])
        return [*entrypoint, *(spec.args or config.get("Cmd") or [])]

    @contextlib.asynccontextmanager
    async def _container(
        self, work: WorkItem, body: dict[str, Any], sink: Sink, suffix: str = ""
    ) -> AsyncIterator[str]:
        """Create a container (not started); stop and remove it on the way out (also on cancel)."""
        await self._ensure_image(body["Image"], sink)
        name = container_name(work, suffix)
        created = await self._call("POST", "/containers/create", params={"name": name}, json=body)
        cid = str(created["Id"])
        try:
            yield cid
        finally:
            await self._remove(cid)

    async def _start(self, cid: str, name: str, body: dict[str, Any], sink: Sink) -> None:
        await self._call("POST", f"/containers/{cid}/start", ok=(204, 304))
        await sink.system(f"container {name} started from {body['Image']}")

    async def _remove(self, cid: str) -> None:
        grace = int(self._config.kill_grace_seconds)
        with contextlib.suppress(DockerError, aiohttp.ClientError):
            await self._call("POST", f"/containers/{cid}/stop", params={"t": str(grace)}, ok=(204, 304))
        if self._config.remove_containers:
            with contextlib.suppress(DockerError, aiohttp.ClientError):
                await self._call(
                    "DELETE", f"/containers/{cid}", params={"force": "true", "v": "true"}, ok=(200, 204, 404)
                )

    async def _ensure_image(self, image: str, sink: Sink) -> None:
        try:
            await self._call("GET", f"/images/{image}/json")
            return
        except DockerError as exc:
            if exc.status != 404:
                raise
        await sink.system(f"pulling {image}")
        repo, tag = split_image(image)
        params = {"fromImage": repo, **({"tag": tag} if tag else {})}
        async with self._session.post(f"{self._base}/images/create", params=params) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise DockerError(resp.status, body.strip())
        for line in body.splitlines():  # the pull reports failures inside its progress stream
            with contextlib.suppress(ValueError):
                error = json.loads(line).get("error")
                if error:
                    raise DockerError(404, f"pulling {image}: {error}")

    async def _attach_and_start(self, cid: str, name: str, body: dict[str, Any], sink: Sink) -> None:
        """Attach to the created container, start it, stream its output to the sink until it ends.

        Attaching before the start sees every byte; following `/logs` instead loses lines of
        a fast writer on Podman 4 (20,000 lines arrived as about 7,000).
        """
        params = {"stream": "1", "stdout": "1", "stderr": "1"}
        async with self._session.post(f"{self._base}/containers/{cid}/attach", params=params) as resp:
            if resp.status != 200:
                raise DockerError(resp.status, await resp.text())
            await self._start(cid, name, body, sink)
            await demux(resp.content, sink)

    async def _exit_code(self, cid: str) -> int:
        result = await self._call("POST", f"/containers/{cid}/wait", limit_seconds=None)
        return int(result["StatusCode"])

    @contextlib.asynccontextmanager
    async def serve(self, work: WorkItem, workspace: Workspace, sink: Sink) -> AsyncIterator[str]:
        """Run a function image for the length of the `async with`; yield its URL."""
        port = self._config.function_port
        container = function_container(work, port)
        workspace.prepare()
        env, hidden = split_sensitive_env(dict(container.env), set(work.activity.sensitive))
        body = create_body(work, container, workspace, self._config, env)
        body["ExposedPorts"] = {f"{port}/tcp": {}}
        published = self._config.docker_function_address == "published"
        if published:
            body["HostConfig"]["PortBindings"] = {f"{port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
        with secret_files(hidden) as directory:
            if directory is not None:
                argv = await self._argv(body["Image"], container, sink)
                if not argv:
                    raise DockerError(400, "the function image has sensitive variables but no command to run")
                wrap_with_secrets(body, directory, argv)
            async with self._container(work, body, sink, suffix="-fn") as cid:
                await self._start(cid, container_name(work, "-fn"), body, sink)
                info = await self._call("GET", f"/containers/{cid}/json")
                host, host_port = _published_address(info, port) if published else (_container_address(info), port)
                await wait_until_listening(host, host_port, self._config.function_ready_seconds)
                await sink.system(f"function {container.image} listening on {host}:{host_port}")
                yield f"http://{host}:{host_port}/"


def _container_address(info: dict[str, Any]) -> str:
    settings = info.get("NetworkSettings") or {}
    if settings.get("IPAddress"):
        return str(settings["IPAddress"])
    for network in (settings.get("Networks") or {}).values():
        if network.get("IPAddress"):
            return str(network["IPAddress"])
    raise DockerError(500, "the function container has no network address")


def _published_address(info: dict[str, Any], port: int) -> tuple[str, int]:
    bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostPort"):
            return binding.get("HostIp") or "127.0.0.1", int(binding["HostPort"])
    raise DockerError(500, f"port {port} of the function container was not published")


async def demux(content: aiohttp.StreamReader, sink: Sink) -> None:
    """Split Docker's multiplexed log stream (8-byte frame headers) into stdout and stderr lines."""
    buffers: dict[LogStream, LineBuffer] = {"stdout": LineBuffer(), "stderr": LineBuffer()}
    while True:
        try:
            header = await content.readexactly(8)
        except asyncio.IncompleteReadError:
            break
        kind, size = struct.unpack(">BxxxI", header)
        payload = await content.readexactly(size) if size else b""
        stream = _STREAMS.get(kind, "stdout")
        if text := buffers[stream].feed(payload):
            await sink.write(stream, text)
    for stream, buffer in buffers.items():
        if text := buffer.rest():
            await sink.write(stream, text)
