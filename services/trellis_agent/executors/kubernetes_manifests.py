"""Kubernetes manifests and pod status for the kubernetes executor, as pure functions.

A pod per activity attempt (labelled tenant/run/activity), its Secret (sensitive env values, the
inputs file, spec files), the workspace PVC of a resource run, and `pod_state`, which reads a
V1Pod into where it is on its way to a result.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from typing import Any

import msgspec

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Workspace, trellis_env
from trellis_core.events import WorkItem
from trellis_core.workflow import ContainerSpec

CONTAINER = "activity"
TERMINATION_LOG = "/dev/termination-log"
CONTROL_DIR = "/var/run/trellis"
DEADLINE_MARGIN_SECONDS = 60
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
        "env": _env(work, spec, names, root),
        "volumeMounts": mounts,
        "workingDir": spec.working_dir or root,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
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
        "securityContext": pod_security(config),
        # The API token only reaches pods given a service account on purpose.
        "automountServiceAccountToken": bool(config.service_account),
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if (limit := work.activity.timeout_seconds) is not None and limit > 0:
        # A backstop should the agent be gone: past the agent's own timeout and kill grace.
        pod_spec["activeDeadlineSeconds"] = math.ceil(limit + config.kill_grace_seconds) + DEADLINE_MARGIN_SECONDS
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


def _env(work: WorkItem, spec: ContainerSpec, names: PodNames, root: str) -> list[dict[str, Any]]:
    """The container's variables; sensitive ones come from the attempt's Secret."""
    sensitive = set(work.activity.sensitive)
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in trellis_env(work, f"{CONTROL_DIR}/inputs.json", TERMINATION_LOG).items()
    ]
    env.append({"name": "TRELLIS_WORKSPACE", "value": root})
    for key, value in spec.env.items():
        if key in sensitive:
            ref = {"name": names.secret, "key": f"env.{key}"}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append({"name": key, "value": value})
    return env


def pod_security(config: AgentConfig) -> dict[str, Any]:
    """The pod's securityContext: the runtime's default seccomp profile, and the configured user."""
    context: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    user, _, group = config.container_user.partition(":")
    if user.isdigit():
        context["runAsUser"] = int(user)
    if group.isdigit():
        context["runAsGroup"] = int(group)
    if config.run_as_non_root or (user.isdigit() and int(user) != 0):
        context["runAsNonRoot"] = True
    return context


def _limits(spec: ContainerSpec) -> dict[str, str]:
    limits = {}
    if spec.cpu_limit_milli:
        limits["cpu"] = f"{spec.cpu_limit_milli}m"
    if spec.memory_limit_mb:
        limits["memory"] = f"{spec.memory_limit_mb}Mi"
    return limits


def build_pvc(work: WorkItem, workspace: Workspace, config: AgentConfig) -> dict[str, Any]:
    labels = {k: v for k, v in labels_for(work).items() if k not in ("trellis.dev/activity", "trellis.dev/attempt")}
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
