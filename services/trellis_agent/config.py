"""The agent's own settings: which tenant and pool it serves and how it runs work.

Built once at start-up from `TRELLIS_AGENT_*` variables (and the CLI flags that override them)
beside the shared `trellis_core.settings.Settings`, then passed down explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from trellis_agent.egress import EgressPolicy
from trellis_core.errors import ConfigError
from trellis_core.ids import uuid7

ExecutorName = Literal["process", "kubernetes", "docker"]

# Variables of the agent's own environment a local process inherits; nothing else leaks
# (in particular not the agent's NATS credentials).
DEFAULT_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "SSL_CERT_FILE")


_LISTS = ("inherit_env", "egress_allow")


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Field `x_y` comes from `TRELLIS_AGENT_X_Y` (`agent_id` from `TRELLIS_AGENT_ID`)."""

    tenant: str = "default"
    pool: str = "default"
    agent_id: str = ""  # empty: a fresh uuid7-derived id per start
    concurrency: int = 4
    executor: ExecutorName = "process"
    data_dir: str = ""  # empty: <TRELLIS_DATA_DIR>/agent
    heartbeat_seconds: float = 0.0  # 0: the shared TRELLIS_HEARTBEAT_SECONDS (default 2 s)
    log_flush_seconds: float = 0.25
    log_chunk_bytes: int = 32 * 1024
    kill_grace_seconds: float = 5.0
    workspace_retention_hours: float = 72.0  # a run's local workspace is removed after this; 0 keeps all
    shutdown_grace_seconds: float = 30.0
    inherit_env: tuple[str, ...] = DEFAULT_INHERITED_ENV
    # CIDRs http and function activities may reach although internal (loopback, link-local,
    # private...); everything internal not listed here is refused (see trellis_agent.egress).
    egress_allow: tuple[str, ...] = ()
    # The timeout of an activity that sets none (0: none at all).
    default_timeout_seconds: float = 3600.0
    # Where a container executor mounts the workspace inside the container.
    container_workspace: str = "/workspace"
    # kubernetes executor
    namespace: str = ""  # empty: the pod's own namespace (service account), else `default`
    delete_pods: bool = True
    workspace_storage: str = "1Gi"
    storage_class: str = ""
    service_account: str = ""
    pod_poll_seconds: float = 1.0
    unschedulable_seconds: float = 60.0  # how long a pod may stay unschedulable (an autoscaler may help)
    # docker executor
    docker_socket: str = "/var/run/docker.sock"
    remove_containers: bool = True
    default_image: str = "busybox"  # used when a spec names no image
    # The user a container runs as ("": the image's own user): docker `User` ("uid[:gid]" or a
    # name), on kubernetes runAsUser/runAsGroup when numeric. `run_as_non_root` makes pods refuse
    # an image whose user is root (runAsNonRoot); leave it off for images that need root.
    container_user: str = ""
    run_as_non_root: bool = False
    pids_limit: int = 1024  # docker: processes a container may run (0: the engine's default)
    # Function images listen on this port ($PORT). Docker: reach them at the container's own
    # address, or at a port published on 127.0.0.1 (an agent outside any container network).
    function_port: int = 8080
    function_ready_seconds: float = 60.0
    docker_function_address: Literal["container", "published"] = "container"
    iac_image: str = ""  # image for OpenTofu/Terraform stages on container backends
    git_binary: str = "git"
    git_image: str = ""  # image with git for checkouts on container backends (default: iac_image)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AgentConfig:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            var = "TRELLIS_AGENT_ID" if name == "agent_id" else f"TRELLIS_AGENT_{name.upper()}"
            if var in env:
                raw = env[var]
                values[name] = tuple(p for p in raw.split(",") if p) if name in _LISTS else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            config = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"TRELLIS_AGENT_*: {exc}") from None
        if not config.agent_id:
            config = msgspec.structs.replace(config, agent_id=f"agent-{uuid7()[-12:]}")
        config.validate()
        return config

    def with_defaults_from(self, heartbeat_seconds: float) -> AgentConfig:
        """Fill what the shared settings decide unless this agent's own variable did."""
        if self.heartbeat_seconds > 0:
            return self
        return msgspec.structs.replace(self, heartbeat_seconds=heartbeat_seconds)

    def workspaces(self, shared_data_dir: Path) -> Path:
        """Where workspaces live: `<data dir>/<tenant>/<run>/<workspace>` below this."""
        return Path(self.data_dir) if self.data_dir else shared_data_dir / "agent"

    def validate(self) -> None:
        checks = [
            ("concurrency", self.concurrency >= 1, "must be at least 1"),
            ("heartbeat_seconds", self.heartbeat_seconds >= 0, "must not be negative"),
            ("log_flush_seconds", self.log_flush_seconds > 0, "must be greater than 0"),
            ("log_chunk_bytes", self.log_chunk_bytes >= 256, "must be at least 256"),
            ("kill_grace_seconds", self.kill_grace_seconds >= 0, "must not be negative"),
            ("default_timeout_seconds", self.default_timeout_seconds >= 0, "must not be negative"),
            ("pids_limit", self.pids_limit >= 0, "must not be negative"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"TRELLIS_AGENT_{name.upper()}={getattr(self, name)!r}: {why}")
        self.egress_policy()  # names the variable when a CIDR is not one

    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.parse(self.egress_allow)
