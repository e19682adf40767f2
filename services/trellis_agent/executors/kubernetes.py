"""The `kubernetes` backend: one pod per activity, in the agent's namespace.

The pod is labelled with tenant, run and activity; sensitive env values, the inputs file and
spec files come from a Secret made for the pod; the resource's workspace is a PVC per resource
run mounted at the container workspace. Logs are followed while the pod runs; the exit code
comes from the container status, outputs from its termination message (the command writes
them to `$TRELLIS_OUTPUTS`, which is the termination-log file). The pod and its Secret are
deleted afterwards (pods: unless configured to be kept) and always on cancel. A pod that
cannot be scheduled, or whose image cannot be pulled, fails with Kubernetes' own reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import msgspec
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, ApiException

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Outcome, Sink, Workspace, parse_outputs, pump_lines, trellis_env
from trellis_agent.executors.process import finish
from trellis_core.events import WorkItem
from trellis_core.workflow import ContainerSpec

CONTAINER = "activity"
TERMINATION_LOG = "/dev/termination-log"
CONTROL_DIR = "/var/run/trellis"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Waiting reasons after which the container will not start without someone changing something.
FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
LOG_DRAIN_SECONDS = 10.0
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class PodNames(msgspec.Struct, frozen=True):
    pod: str
    secret: str

    @classmethod
    def for_work(cls, work: WorkItem) -> PodNames:
        digest = hashlib.sha256(f"{work.run_id}/{work.activity.id}/{work.attempt}".encode()).hexdigest()[:10]
        tail = re.sub(r"[^a-z0-9-]+", "-", work.activity.id.lower().rsplit("/", 2)[-1]).strip("-")[:30]
        pod = f"trellis-{tail}-{digest}" if tail else f"trellis-{digest}"
        return cls(pod=pod, secret=f"{pod}-env")


def label_value(value: str) -> str:
    """A valid label value (≤ 63, alphanumerics at both ends); the full value goes in annotations."""
    cleaned = _LABEL_UNSAFE.sub(".", value)[:63].strip("._-")
    return cleaned


def labels_for(work: WorkItem) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "trellis-agent",
        "trellis.dev/tenant": label_value(work.tenant),
        "trellis.dev/run": label_value(work.run_id),
        "trellis.dev/activity": label_value(work.activity.id),
        "trellis.dev/attempt": str(work.attempt),
    }


def build_secret(work: WorkItem, spec: ContainerSpec, names: PodNames) -> dict[str, Any]:
    """Sensitive env values, the inputs file and spec files, base64-encoded."""
    sensitive = set(work.activity.sensitive)
    data = {"inputs.json": _b64(json.dumps(work.activity.inputs))}
    data.update({f"env.{k}": _b64(v) for k, v in spec.env.items() if k in sensitive})
    data.update({f"file.{i}": content for i, content in enumerate(spec.files.values())})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names.secret, "labels": labels_for(work)},
        "type": "Opaque",
        "data": data,
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def build_pod(
    work: WorkItem, spec: ContainerSpec, names: PodNames, workspace: Workspace, config: AgentConfig
) -> dict[str, Any]:
    """The pod manifest of one activity attempt (a pure function of its inputs)."""
    root = config.container_workspace
    sensitive = set(work.activity.sensitive)
    env: list[dict[str, Any]] = [
        {"name": k, "value": v}
        for k, v in trellis_env(work, f"{CONTROL_DIR}/inputs.json", TERMINATION_LOG).items()
    ]
    env.append({"name": "TRELLIS_WORKSPACE", "value": root})
    for key, value in spec.env.items():
        if key in sensitive:
            ref = {"name": names.secret, "key": f"env.{key}"}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append({"name": key, "value": value})
    mounts: list[dict[str, Any]] = [
        {"name": "workspace", "mountPath": root},
        {
            "name": "trellis",
            "mountPath": f"{CONTROL_DIR}/inputs.json",
            "subPath": "inputs.json",
            "readOnly": True,
        },
    ]
    for i, path in enumerate(spec.files):
        target = path if path.startswith("/") else f"{root}/{path}"
        mounts.append({"name": "trellis", "mountPath": target, "subPath": f"file.{i}", "readOnly": True})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or config.default_image,
        "env": env,
        "volumeMounts": mounts,
        "workingDir": spec.working_dir or root,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    limits = _limits(spec)
    if limits:
        container["resources"] = {"limits": limits, "requests": limits}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": workspace.volume_name}},
            {"name": "trellis", "secret": {"secretName": names.secret}},
        ],
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.pod,
            "labels": labels_for(work),
            "annotations": {"trellis.dev/activity-id": work.activity.id, "trellis.dev/run-id": work.run_id},
        },
        "spec": pod_spec,
    }


def _limits(spec: ContainerSpec) -> dict[str, str]:
    limits = {}
    if spec.cpu_limit_milli:
        limits["cpu"] = f"{spec.cpu_limit_milli}m"
    if spec.memory_limit_mb:
        limits["memory"] = f"{spec.memory_limit_mb}Mi"
    return limits


def build_pvc(work: WorkItem, workspace: Workspace, config: AgentConfig) -> dict[str, Any]:
    labels = {
        k: v for k, v in labels_for(work).items() if k not in ("trellis.dev/activity", "trellis.dev/attempt")
    }
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": config.workspace_storage}},
    }
    if config.storage_class:
        spec["storageClassName"] = config.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": workspace.volume_name, "labels": labels},
        "spec": spec,
    }


class Running(msgspec.Struct, frozen=True):
    """The container has started (or finished): its logs can be read."""


class Pending(msgspec.Struct, frozen=True):
    unschedulable: str = ""  # the scheduler's message while the pod cannot be placed


class Finished(msgspec.Struct, frozen=True):
    exit_code: int
    message: str = ""


class Broken(msgspec.Struct, frozen=True):
    reason: str


PodState = Running | Pending | Finished | Broken


def pod_state(pod: Any) -> PodState:
    """Read a V1Pod: where it is on its way to a result (a pure function)."""
    status = pod.status
    if status is None:
        return Pending()
    for cs in status.container_statuses or ():
        state = cs.state
        if state is None:
            continue
        if state.terminated is not None:
            return Finished(exit_code=int(state.terminated.exit_code), message=state.terminated.message or "")
        if state.waiting is not None and state.waiting.reason in FATAL_WAITING:
            detail = f": {state.waiting.message}" if state.waiting.message else ""
            return Broken(f"{state.waiting.reason}{detail}")
        if state.running is not None:
            return Running()
    if status.phase == "Failed":
        detail = f": {status.message}" if status.message else ""
        return Broken(f"pod failed: {status.reason or 'unknown reason'}{detail}")
    if status.phase in ("Running", "Succeeded"):
        return Running()
    for cond in status.conditions or ():
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return Pending(unschedulable=cond.message or "the pod cannot be scheduled")
    return Pending()


class KubernetesExecutor:
    def __init__(self, api: ApiClient, *, namespace: str, config: AgentConfig) -> None:
        self._api = api
        # Typed as Any: the generated client declares model classes, we pass manifests as dicts.
        self._core: Any = client.CoreV1Api(api)
        self._namespace = namespace
        self._config = config

    @classmethod
    async def from_config(cls, config: AgentConfig) -> KubernetesExecutor:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        try:
            kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
            namespace = (await asyncio.to_thread(SA_NAMESPACE_FILE.read_text)).strip()
        except kube_config.ConfigException:
            await kube_config.load_kube_config()
            namespace = "default"
        return cls(ApiClient(), namespace=config.namespace or namespace, config=config)

    async def close(self) -> None:
        await self._api.close()

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        spec = work.activity.spec
        if not isinstance(spec, ContainerSpec):
            return Outcome.failed(
                f"the kubernetes executor runs container activities, not {type(spec).__name__}",
                retryable=False,
            )
        names = PodNames.for_work(work)
        await self._ensure(
            self._core.create_namespaced_persistent_volume_claim, build_pvc(work, workspace, self._config)
        )
        try:
            await self._ensure(self._core.create_namespaced_secret, build_secret(work, spec, names))
            pod = build_pod(work, spec, names, workspace, self._config)
            pod["metadata"]["namespace"] = self._namespace
            await self._core.create_namespaced_pod(self._namespace, pod)
            await sink.system(f"pod {self._namespace}/{names.pod} created")
            return await self._follow(names.pod, spec, sink)
        except ApiException as exc:
            return Outcome.failed(
                f"kubernetes refused: {exc.status} {exc.reason}: {_api_message(exc)}",
                retryable=exc.status >= 500 or exc.status == 429,
            )
        finally:
            await self._cleanup(names)

    async def _ensure(self, create: Any, body: dict[str, Any]) -> None:
        body["metadata"]["namespace"] = self._namespace
        try:
            await create(self._namespace, body)
        except ApiException as exc:
            if exc.status != 409:  # already there: a PVC shared by the resource's stages
                raise

    async def _follow(self, pod: str, spec: ContainerSpec, sink: Sink) -> Outcome:
        logs: asyncio.Task[None] | None = None
        unschedulable_since: float | None = None
        try:
            while True:
                state = pod_state(await self._core.read_namespaced_pod(pod, self._namespace))
                if isinstance(state, Running | Finished) and logs is None:
                    logs = asyncio.create_task(self._stream_logs(pod, sink))
                if isinstance(state, Finished):
                    if logs is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(logs), LOG_DRAIN_SECONDS)
                    outputs = (
                        parse_outputs(state.message, where="the termination message")
                        if state.exit_code == 0
                        else {}
                    )
                    return finish(state.exit_code, spec.success_condition, outputs)
                if isinstance(state, Broken):
                    await sink.system(state.reason)
                    return Outcome.failed(state.reason, retryable=False)
                if isinstance(state, Pending) and state.unschedulable:
                    now = time.monotonic()
                    unschedulable_since = unschedulable_since or now
                    if now - unschedulable_since >= self._config.unschedulable_seconds:
                        await sink.system(f"unschedulable: {state.unschedulable}")
                        return Outcome.failed(f"Unschedulable: {state.unschedulable}")
                await asyncio.sleep(self._config.pod_poll_seconds)
        finally:
            if logs is not None and not logs.done():
                logs.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await logs

    async def _stream_logs(self, pod: str, sink: Sink) -> None:
        try:
            resp = await self._core.read_namespaced_pod_log(
                pod, self._namespace, container=CONTAINER, follow=True, _preload_content=False
            )
            async with resp:
                await pump_lines(resp.content.read, "stdout", sink)
        except ApiException as exc:
            await sink.system(f"logs unavailable: {exc.status} {exc.reason}")

    async def _cleanup(self, names: PodNames) -> None:
        if self._config.delete_pods:
            await self._delete(
                self._core.delete_namespaced_pod, names.pod, grace=int(self._config.kill_grace_seconds)
            )
        await self._delete(self._core.delete_namespaced_secret, names.secret)

    async def _delete(self, delete: Any, name: str, grace: int | None = None) -> None:
        kwargs = {"grace_period_seconds": grace} if grace is not None else {}
        try:
            await delete(name, self._namespace, **kwargs)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    except (TypeError, ValueError, AttributeError):
        return str(exc.body)
