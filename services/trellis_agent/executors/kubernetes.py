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
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, ApiException

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import (
    Outcome,
    Sink,
    Workspace,
    function_container,
    parse_outputs,
    pump_lines,
    wait_until_listening,
)
from trellis_agent.executors.kubernetes_manifests import (
    CONTAINER,
    Broken,
    Finished,
    Pending,
    PodNames,
    Running,
    build_pod,
    build_pvc,
    build_secret,
    pod_state,
)
from trellis_agent.executors.process import finish
from trellis_core.events import WorkItem
from trellis_core.logs import get_logger
from trellis_core.workflow import ContainerSpec

log = get_logger("agent.kubernetes")
API_TIMEOUT_SECONDS = 30.0  # any one API call; following a pod's logs has no limit of its own
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LOG_DRAIN_SECONDS = 10.0


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
        finished = False  # a cancelled or timed-out pod is always deleted
        try:
            await self._ensure(
                self._core.create_namespaced_persistent_volume_claim, build_pvc(work, workspace, self._config)
            )
            await self._ensure(self._core.create_namespaced_secret, build_secret(work, spec, names))
            pod = build_pod(work, spec, names, workspace, self._config)
            pod["metadata"]["namespace"] = self._namespace
            await self._core.create_namespaced_pod(self._namespace, pod, _request_timeout=API_TIMEOUT_SECONDS)
            await sink.system(f"pod {self._namespace}/{names.pod} created")
            outcome = await self._follow(names.pod, spec, sink)
            finished = True
            return outcome
        except ApiException as exc:
            finished = True
            return Outcome.failed(
                f"kubernetes refused: {exc.status} {exc.reason}: {_api_message(exc)}",
                retryable=exc.status >= 500 or exc.status == 429,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"cannot reach the Kubernetes API: {type(exc).__name__}: {exc}"
            await sink.system(reason)
            return Outcome.failed(reason)
        finally:
            await self._cleanup(names, keep_pod=finished and not self._config.delete_pods)

    async def _ensure(self, create: Any, body: dict[str, Any]) -> None:
        body["metadata"]["namespace"] = self._namespace
        try:
            await create(self._namespace, body, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status != 409:  # already there: a PVC shared by the resource's stages
                raise

    @contextlib.asynccontextmanager
    async def serve(self, work: WorkItem, workspace: Workspace, sink: Sink) -> AsyncIterator[str]:
        """Run a function image as a pod for the length of the `async with`; yield its URL."""
        port = self._config.function_port
        container = function_container(work, port)
        names = PodNames.for_work(work)
        await self._ensure(
            self._core.create_namespaced_persistent_volume_claim, build_pvc(work, workspace, self._config)
        )
        try:
            await self._ensure(self._core.create_namespaced_secret, build_secret(work, container, names))
            pod = build_pod(work, container, names, workspace, self._config)
            pod["metadata"]["namespace"] = self._namespace
            pod["spec"]["containers"][0]["ports"] = [{"containerPort": port, "name": "function"}]
            await self._core.create_namespaced_pod(self._namespace, pod, _request_timeout=API_TIMEOUT_SECONDS)
            await sink.system(f"function pod {self._namespace}/{names.pod} created")
            address = await self._pod_address(names.pod)
            await wait_until_listening(address, port, self._config.function_ready_seconds)
            yield f"http://{address}:{port}/"
        finally:
            await self._cleanup(names)

    async def _pod_address(self, pod: str) -> str:
        """The pod's IP once it runs; a pod that cannot start raises with Kubernetes' reason."""
        unschedulable_since: float | None = None
        while True:
            current = await self._core.read_namespaced_pod(pod, self._namespace, _request_timeout=API_TIMEOUT_SECONDS)
            state = pod_state(current)
            if isinstance(state, Running) and current.status.pod_ip:
                return str(current.status.pod_ip)
            if isinstance(state, Broken):
                raise RuntimeError(state.reason)
            if isinstance(state, Finished):
                raise RuntimeError(f"the function exited with code {state.exit_code}")
            if isinstance(state, Pending) and state.unschedulable:
                unschedulable_since = unschedulable_since or time.monotonic()
                if time.monotonic() - unschedulable_since >= self._config.unschedulable_seconds:
                    raise RuntimeError(f"Unschedulable: {state.unschedulable}")
            await asyncio.sleep(self._config.pod_poll_seconds)

    async def _follow(self, pod: str, spec: ContainerSpec, sink: Sink) -> Outcome:
        logs: asyncio.Task[None] | None = None
        unschedulable_since: float | None = None
        try:
            while True:
                state = pod_state(
                    await self._core.read_namespaced_pod(pod, self._namespace, _request_timeout=API_TIMEOUT_SECONDS)
                )
                if isinstance(state, Running | Finished) and logs is None:
                    logs = asyncio.create_task(self._stream_logs(pod, sink))
                if isinstance(state, Finished):
                    if logs is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(logs), LOG_DRAIN_SECONDS)
                    outputs = (
                        parse_outputs(state.message, where="the termination message") if state.exit_code == 0 else {}
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

    async def _cleanup(self, names: PodNames, *, keep_pod: bool = False) -> None:
        if not keep_pod:
            grace = int(self._config.kill_grace_seconds)
            await self._delete(self._core.delete_namespaced_pod, names.pod, grace=grace)
        await self._delete(self._core.delete_namespaced_secret, names.secret)

    async def _delete(self, delete: Any, name: str, grace: int | None = None) -> None:
        kwargs = {"grace_period_seconds": grace} if grace is not None else {}
        try:
            await delete(name, self._namespace, _request_timeout=API_TIMEOUT_SECONDS, **kwargs)
        except ApiException as exc:
            if exc.status != 404:  # left behind: labelled, so `kubectl delete -l` finds it
                log.warning("kubernetes_delete_failed", name=name, status=exc.status, reason=exc.reason)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("kubernetes_delete_failed", name=name, error=repr(exc))


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    except (TypeError, ValueError, AttributeError):
        return str(exc.body)
