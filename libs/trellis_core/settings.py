"""Every setting, read once from `TRELLIS_*` environment variables, validated, then passed down."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import platformdirs

from trellis_core.errors import ConfigError

T = TypeVar("T")

# NATS refuses messages over 64 MiB whatever its max_payload; base64 makes bytes 4/3 bigger.
MAX_BUNDLE_BYTES = 48 * 1024**2
BUNDLE_RANGE = "must be greater than 0 and at most 48 MiB (raise the nats-server's max_payload with it)"

# Sizes, chosen so that each message fits the 1 MiB max_payload of a default nats-server.
# An activity's outputs travel in its activity.completed event, and on every later run.completed.
MAX_OUTPUT_BYTES = 768 * 1024
# A compiled workflow larger than this (encoded) is stored once in the workflow object store and
# run.compiled names it by digest; a smaller one travels inside the event.
WORKFLOW_INLINE_MAX_BYTES = 256 * 1024
MAX_WORKFLOW_BYTES = 256 * 1024**2


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Start-up configuration. Field `x_y` comes from `TRELLIS_X_Y`."""

    nats_url: str = ""  # empty: the embedded stack starts its own
    nats_creds_file: str = ""  # a NATS .creds file: per-tenant credentials for agents
    database_url: str = ""
    gateway_url: str = ""  # the CLI: work through this gateway instead of the bus
    token: str = ""  # the CLI's bearer token for the gateway
    # The gateway: where it listens, the URL the outside world reaches it by (approval callback
    # URLs are minted on it; default: the listen address) and the platform admin's token (only
    # `POST /v1/tenants` takes it; kept here in clear, compared by its SHA-256).
    gateway_listen: str = "127.0.0.1:8080"
    gateway_public_url: str = ""
    admin_token: str = ""
    # Where a service (compiler, scheduler, store, agent) answers GET /healthz and /readyz
    # (host:port, port 0: a free one; empty: no health server). trellis_core.health.
    health_listen: str = ""
    # HMAC key of approval callback tokens (shared by the scheduler that mints them and the gateway
    # that checks them) and how long a callback URL stays valid.
    callback_key: str = ""
    callback_ttl_seconds: float = 7 * 86_400.0
    # Managed OpenTofu/Terraform state (docs/state-backend.md): the gateway URL agents reach the
    # state backend by (default: TRELLIS_GATEWAY_PUBLIC_URL, else the listen address) and how long
    # a run's state credential is good for at most (it is revoked sooner, when its run ends).
    state_backend_url: str = ""
    state_credential_ttl_seconds: float = 7 * 86_400.0
    # The master key (base64, 32 bytes) every tenant's data key is derived from (trellis_core.sealed),
    # and the retired ones (comma-separated) that still open what they sealed until re-sealed.
    # Control plane only: agents get their own tenant's derived keys over the bus.
    seal_key: str = ""
    seal_keys_retired: str = ""
    # nkey authentication: the seed file this process connects with (a tenant's agent, or the
    # control plane on a secured server), and for the store, the nats-server authorization file it
    # keeps current from the tenants' agent keys and the pid file of the server it asks to reload.
    nats_nkey_seed_file: str = ""
    nats_auth_file: str = ""
    nats_pid_file: str = ""
    store_logs_retention_days: float = 30.0  # log chunks older than this are deleted from PostgreSQL
    store_pool_size: int = 10
    tenant: str = "default"
    # The embedded stack's servers, the deployed environments' state and the agent's workspaces:
    # one directory per user, whatever directory a command starts in.
    data_dir: Path = msgspec.field(default_factory=lambda: default_data_dir())
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    stream_replicas: int = 1
    stream_storage: Literal["file", "memory"] = "file"
    events_max_age_days: float = 90.0
    logs_max_age_days: float = 14.0
    logs_max_bytes: int = 8 * 1024**3
    dedupe_window_seconds: float = 120.0
    connect_timeout_seconds: float = 5.0
    heartbeat_seconds: float = 2.0
    heartbeat_timeout_seconds: float = 15.0
    max_parallel_per_run: int = 32
    max_parallel_per_tenant: int = 256
    # Scheduler partitions: runs split by their tenant and environment, each partition led by one
    # replica (docs/scaling.md). Fixed at install: changing it strands the runs of the old layout.
    scheduler_partitions: int = 1
    run_answer_timeout_seconds: float = 30.0  # `trellis run`: how long to wait for any answer to a run
    # Files beside the templates travel base64-encoded inside the run request, one NATS message:
    # these defaults keep it under the 1 MiB max_payload of a default (and the embedded) nats-server.
    bundle_max_bytes: int = 512 * 1024
    bundle_file_max_bytes: int = 256 * 1024
    # The largest compiled workflow (encoded JSON) the compiler accepts: larger runs are rejected.
    workflow_max_bytes: int = 64 * 1024**2
    stack_wait_seconds: float = 3600.0  # how long to wait for another embedded stack on data_dir to stop

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `environ` (default: the process environment).

        Raises ConfigError naming the variable when a value is missing its type or range.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            var = f"TRELLIS_{name.upper()}"
            if var in env:
                values[name] = env[var]
        values.update(overrides)
        if str(values.get("data_dir", "x")).strip() == "":  # set but empty: the default, as if unset
            del values["data_dir"]
        if "data_dir" in values:  # msgspec.convert turns no str into a Path
            values["data_dir"] = Path(values["data_dir"]).expanduser()
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_name_variable(str(exc))) from None
        settings.validate()
        return settings

    def nats_servers(self) -> list[str]:
        """TRELLIS_NATS_URL as a list: one URL, or several separated by commas (a cluster's nodes:
        a client connects to any and moves to another when its node goes away)."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    def validate(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            (
                "nats_creds_file",
                not self.nats_creds_file or Path(self.nats_creds_file).is_file(),
                "no such file",
            ),
            (
                "nats_nkey_seed_file",
                not self.nats_nkey_seed_file or Path(self.nats_nkey_seed_file).is_file(),
                "no such file",
            ),
            ("stream_replicas", self.stream_replicas in (1, 3, 5), "must be 1, 3 or 5"),
            ("heartbeat_seconds", self.heartbeat_seconds > 0, "must be greater than 0"),
            (
                "heartbeat_timeout_seconds",
                self.heartbeat_timeout_seconds > self.heartbeat_seconds,
                "must be greater than TRELLIS_HEARTBEAT_SECONDS",
            ),
            ("max_parallel_per_run", self.max_parallel_per_run > 0, "must be at least 1"),
            ("max_parallel_per_tenant", self.max_parallel_per_tenant > 0, "must be at least 1"),
            ("scheduler_partitions", 1 <= self.scheduler_partitions <= 256, "must be 1 to 256"),
            ("connect_timeout_seconds", self.connect_timeout_seconds > 0, "must be greater than 0"),
            ("run_answer_timeout_seconds", self.run_answer_timeout_seconds > 0, "must be greater than 0"),
            ("bundle_max_bytes", 0 < self.bundle_max_bytes <= MAX_BUNDLE_BYTES, BUNDLE_RANGE),
            (
                "bundle_file_max_bytes",
                0 < self.bundle_file_max_bytes <= self.bundle_max_bytes,
                "must be greater than 0 and at most TRELLIS_BUNDLE_MAX_BYTES",
            ),
            (
                "workflow_max_bytes",
                0 < self.workflow_max_bytes <= MAX_WORKFLOW_BYTES,
                "must be greater than 0 and at most 256 MiB",
            ),
            ("stack_wait_seconds", self.stack_wait_seconds > 0, "must be greater than 0"),
            (
                "nats_url",
                all(_is_url(url, ("nats", "tls", "ws", "wss")) for url in self.nats_servers()),
                "must be a nats:// URL, or several separated by commas (the nodes of a cluster)",
            ),
            ("database_url", _is_url(self.database_url, ("postgres", "postgresql")), "must be a postgresql:// URL"),
            ("gateway_url", _is_url(self.gateway_url, ("http", "https")), "must be an http(s):// URL"),
            ("gateway_public_url", _is_url(self.gateway_public_url, ("http", "https")), "must be an http(s):// URL"),
            ("callback_ttl_seconds", self.callback_ttl_seconds > 0, "must be greater than 0"),
            ("state_backend_url", _is_url(self.state_backend_url, ("http", "https")), "must be an http(s):// URL"),
            ("state_credential_ttl_seconds", self.state_credential_ttl_seconds > 0, "must be greater than 0"),
            ("store_logs_retention_days", self.store_logs_retention_days > 0, "must be greater than 0"),
            ("store_pool_size", self.store_pool_size > 0, "must be at least 1"),
            ("health_listen", _is_listen(self.health_listen), "write host:port (e.g. 0.0.0.0:8081; 0: a free port)"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"TRELLIS_{name.upper()}={getattr(self, name)!r}: {why}")


def default_data_dir() -> Path:
    """The per-user data directory (`~/.local/share/trellis` on Linux, unless XDG_DATA_HOME says
    otherwise) used when TRELLIS_DATA_DIR is unset."""
    return Path(platformdirs.user_data_dir("trellis", appauthor=False))


def data_dir_help(environ: Mapping[str, str] | None = None) -> str:
    """Where the data directory is, for a command's --help."""
    env = os.environ if environ is None else environ
    what = "The embedded servers' data, each environment's last deploy (what a destroy works from) and "
    what += "the agent's workspaces live in"
    chosen = env.get("TRELLIS_DATA_DIR", "").strip()
    if chosen:
        return f"{what} TRELLIS_DATA_DIR={chosen} (unset: the per-user {default_data_dir()})."
    return f"{what} the per-user data directory {default_data_dir()} (TRELLIS_DATA_DIR sets another)."


def _is_url(value: str, schemes: tuple[str, ...]) -> bool:
    if not value:
        return True
    return any(value.startswith(f"{s}://") for s in schemes) and len(value.split("://", 1)[1]) > 0


def _is_listen(value: str) -> bool:
    if not value:
        return True
    _, sep, port = value.rpartition(":")
    return bool(sep) and port.isdigit() and 0 <= int(port) <= 65535


def _name_variable(message: str) -> str:
    """Rewrite msgspec's `Expected int, got str - at $.heartbeat_seconds` to name the variable."""
    text, _, where = message.partition(" - at `$.")
    if where:
        field = where.rstrip("`").split(".")[0].split("[")[0]
        return f"TRELLIS_{field.upper()}: {text.lower()}"
    return message


def env_flag(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    """A boolean switch variable (1/0, true/false, yes/no); a bad value names the variable."""
    return _parse(name, default, environ, _bool)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _parse(name: str, default: T, environ: Mapping[str, str] | None, parse: Callable[[str], T]) -> T:
    env = os.environ if environ is None else environ
    if name not in env:
        return default
    try:
        return parse(env[name])
    except ValueError as exc:
        raise ConfigError(f"{name}={env[name]!r}: {exc}") from None
