"""A kubelet for kmock's emulator that runs each pod's container as a local process.

It watches the namespace, runs `command + args` in a directory standing for the pod's
PVC (so two pods on one claim share files), serves the output as the pod's log, reports
the exit code and the termination-log file as the container's terminated state, and kills
the process group when the pod is deleted. The executor under test sees a real pod lifecycle.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock

CONTAINER_ROOT = "/workspace"
TERMINATION_LOG = "/dev/termination-log"


@dataclass
class LocalPod:
    """One pod's process and what it has written so far (stdout and stderr, as kubectl logs shows)."""

    name: str
    output: bytearray = field(default_factory=bytearray)
    ended: bool = False
    deleted: bool = False
    pid: int | None = None  # while the process runs (its group id too)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def append(self, data: bytes) -> None:
        async with self.changed:
            self.output += data
            self.changed.notify_all()

    async def end(self) -> None:
        async with self.changed:
            self.ended = True
            self.changed.notify_all()

    async def log(self) -> AsyncIterator[bytes]:
        """The pod's log, followed until the container ends."""
        yield b""  # starts the response at once, also for a pod that writes nothing
        sent = 0
        while True:
            chunk, done = await self._after(sent)
            sent += len(chunk)
            if chunk:
                yield chunk
            elif done:
                return

    async def _after(self, sent: int) -> tuple[bytes, bool]:
        """What was written after the first `sent` bytes (waits for more), and whether it ended."""
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.output) > sent or self.ended)
            return bytes(self.output[sent:]), self.ended


class LocalKubelet:
    """Plays the node for every pod created in `namespace`; use as `async with`."""

    def __init__(self, emulator: kmock.KubernetesEmulator, core: Any, namespace: str, volumes: Path) -> None:
        self._emulator = emulator
        self._core = core
        self._namespace = namespace
        self._volumes = volumes
        self.pods: dict[str, LocalPod] = {}
        self._group: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> LocalKubelet:
        self._emulator["get", kmock.resource("v1/pods"), kmock.subresource("log")] << self._serve_log
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._watcher = self._group.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._watcher.cancel()
        for pod in self.pods.values():
            _kill(pod)
        assert self._group is not None
        await self._group.__aexit__(None, None, None)

    def _serve_log(self, request: kmock.Request) -> AsyncIterator[bytes]:
        return self.pods[str(request.name)].log()

    async def _watch(self) -> None:
        url = f"{str(self._emulator.url).rstrip('/')}/api/v1/namespaces/{self._namespace}/pods?watch=true"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            async for line in resp.content:
                event = json.loads(line) if line.strip() else {}
                name = event.get("object", {}).get("metadata", {}).get("name", "")
                if event.get("type") == "ADDED" and name not in self.pods:
                    self.pods[name] = LocalPod(name)
                    assert self._group is not None
                    self._group.create_task(self._run(self.pods[name], event["object"]))
                elif event.get("type") == "DELETED" and name in self.pods:
                    self.pods[name].deleted = True
                    _kill(self.pods[name])

    async def _run(self, pod: LocalPod, manifest: dict[str, Any]) -> None:
        try:
            await self._start_and_wait(pod, manifest)
        except Exception as exc:  # a pod this kubelet cannot run fails with the reason, like a node's
            await pod.end()
            with contextlib.suppress(Exception):
                await self._status(pod.name, {"phase": "Failed", "reason": "LocalKubelet", "message": repr(exc)})

    async def _start_and_wait(self, pod: LocalPod, manifest: dict[str, Any]) -> None:
        container = manifest["spec"]["containers"][0]
        private = self._volumes / "pods" / pod.name
        private.mkdir(parents=True)
        paths = await self._mount(manifest, private)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        secrets = await self._secret_data(manifest)
        for entry in container.get("env", []):
            if "valueFrom" in entry:
                env[entry["name"]] = base64.b64decode(secrets[entry["valueFrom"]["secretKeyRef"]["key"]]).decode()
            else:
                env[entry["name"]] = _local(entry["value"], paths)
        proc = await asyncio.create_subprocess_exec(
            *container.get("command", []),
            *container.get("args", []),
            cwd=_local(container.get("workingDir", CONTAINER_ROOT), paths),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        pod.pid = proc.pid
        assert proc.stdout is not None
        try:
            if pod.deleted:  # deleted while this kubelet was still setting it up
                _kill(pod)
            await self._status(pod.name, {"phase": "Running", "containerStatuses": [_state({"running": {}})]})
            while block := await proc.stdout.read(64 * 1024):
                await pod.append(block)
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                _kill(pod)
                await proc.wait()
            pod.pid = None
            await pod.end()
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as a runtime reports
        message = _read_if_there(Path(paths[TERMINATION_LOG]))
        terminated = {"exitCode": code, "message": message, "reason": "Completed" if code == 0 else "Error"}
        phase = "Succeeded" if code == 0 else "Failed"
        with contextlib.suppress(Exception):  # the pod may be gone already (cancelled)
            await self._status(pod.name, {"phase": phase, "containerStatuses": [_state({"terminated": terminated})]})

    async def _mount(self, manifest: dict[str, Any], private: Path) -> dict[str, str]:
        """Container path -> local path: the claim's directory, the Secret's files, the termination log."""
        volumes = {v["name"]: v for v in manifest["spec"]["volumes"]}
        secrets = await self._secret_data(manifest)
        paths = {TERMINATION_LOG: str(private / "termination-log")}
        for mount in manifest["spec"]["containers"][0].get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = self._volumes / "claims" / volume["persistentVolumeClaim"]["claimName"]
                claim.mkdir(parents=True, exist_ok=True)
                paths[mount["mountPath"]] = str(claim)
        for mount in manifest["spec"]["containers"][0].get("volumeMounts", []):
            if "secret" in volumes[mount["name"]]:
                local = _local(mount["mountPath"], paths)
                if local == mount["mountPath"]:  # outside every volume: the pod's own file system
                    local = str(private / mount["mountPath"].lstrip("/"))
                _write(Path(local), base64.b64decode(secrets[mount["subPath"]]))
                paths[mount["mountPath"]] = local
        return paths

    async def _secret_data(self, manifest: dict[str, Any]) -> dict[str, str]:
        names = [v["secret"]["secretName"] for v in manifest["spec"]["volumes"] if "secret" in v]
        if not names:
            return {}
        secret = await self._core.read_namespaced_secret(names[0], self._namespace)
        return dict(secret.data or {})

    async def _status(self, pod: str, status: dict[str, Any]) -> None:
        await self._core.patch_namespaced_pod_status(pod, self._namespace, {"status": status})


def _local(path: str, paths: dict[str, str]) -> str:
    """Where a container path lives on this machine (the longest mount that holds it)."""
    for mount in sorted(paths, key=len, reverse=True):
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return paths[mount] + path[len(mount) :]
    return path


def _read_if_there(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _kill(pod: LocalPod) -> None:
    if pod.pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pod.pid, signal.SIGKILL)


def _state(state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "activity", "image": "local", "imageID": "", "ready": False, "restartCount": 0, "state": state}
