"""nats-server authorization for tenant isolation (docs/running.md, "Secure mode and tenant credentials").

One account, nkey users with per-user permissions in a generated config: the control plane's user
may do everything, each tenant agent's nkey exactly `agent_permissions(tenant)`. Pure: the store
writes what `render_authorization` returns and signals the server to reload; the dev stack writes
what `render_config` returns once."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from trellis_core import subjects
from trellis_core.errors import TrellisError

Permissions = dict[str, dict[str, list[str]]]


class NatsAuthError(TrellisError):
    """An nkey or an authorization entry that cannot be used (named in the message)."""


def agent_permissions(tenant: str) -> Permissions:
    """What one tenant's agent may publish and subscribe, and nothing more.

    JetStream API subjects name their stream, so the tenant's own work stream and bundle bucket
    are pinned by name; the shared events/logs streams are written by subject (`trellis.<t>.>`),
    and the approvals consumer is pinned by its filter in the named-consumer create subject.
    No stream create/update/delete, no KV, no other tenant's anything."""
    t = subjects.tenant_token(tenant)
    work = subjects.work_stream(t)
    bundles = f"OBJ_{subjects.bundles_bucket(t)}"
    inbox = subjects.inbox_prefix(t)
    events = subjects.STREAM_EVENTS
    publish = [
        f"{subjects.PREFIX}.{t}.>",  # events, logs, work replies, key requests, dead letters
        "$JS.API.INFO",
        # its work stream: bind / create its durable consumers, pull, acknowledge
        f"$JS.API.STREAM.INFO.{work}",
        f"$JS.API.CONSUMER.CREATE.{work}",
        f"$JS.API.CONSUMER.CREATE.{work}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{work}.*",
        f"$JS.API.CONSUMER.INFO.{work}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{work}.*",
        f"$JS.ACK.{work}.>",
        # its bundle bucket: object store reads by message get only (bus.get_bundle), no consumer
        f"$JS.API.STREAM.INFO.{bundles}",
        f"$JS.API.STREAM.MSG.GET.{bundles}",
        f"$JS.API.DIRECT.GET.{bundles}",
        f"$JS.API.DIRECT.GET.{bundles}.>",
        # approvals: a consumer on the shared events stream whose filter is its tenant's (its ack
        # policy is none and it delivers to the agent's inbox: no `$JS.ACK.TRELLIS_EVENTS`, which
        # would name no tenant)
        f"$JS.API.CONSUMER.CREATE.{events}.*.{subjects.PREFIX}.{t}.>",
    ]
    # What only the control plane says about a tenant's runs, never its agents (which run the
    # tenant's own code): decisions on approvals, run requests and lifecycle, dispatches, work
    # items and cancel commands. An agent publishes activity ends, heartbeats, approval requests,
    # logs, its dead letters and its key requests.
    control_only = [
        f"{subjects.PREFIX}.{t}.run.*.approval.decided",
        f"{subjects.PREFIX}.{t}.run.*.approval.decided.>",
        f"{subjects.PREFIX}.{t}.run.*.run.>",
        f"{subjects.PREFIX}.{t}.run.*.activity.dispatched",
        f"{subjects.PREFIX}.{t}.run.*.activity.dispatched.>",
        f"{subjects.PREFIX}.{t}.runs.>",
        f"{subjects.PREFIX}.{t}.work.>",
        f"{subjects.PREFIX}.{t}.control.>",
    ]
    return {
        "publish": {"allow": publish, "deny": control_only},
        "subscribe": {
            "allow": [f"{subjects.PREFIX}.{t}.>", f"{inbox}.>"],
            # an agent asks for its keys; it must never be the one answering
            "deny": [f"{subjects.PREFIX}.{t}.keys.>"],
        },
    }


def control_plane_permissions() -> Permissions:
    """The control plane's user: every subject (it runs the shared streams for every tenant)."""
    return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


@dataclass(frozen=True)
class User:
    """One nkey user of the generated authorization."""

    public_key: str
    permissions: Permissions


def new_user_seed(raw: bytes | None = None) -> tuple[str, str]:
    """A new nkey user: (seed `SU...`, public key `U...`). `raw` (32 bytes) only for tests."""
    src = raw if raw is not None else os.urandom(32)
    seed = nkeys.encode_seed(src, nkeys.PREFIX_BYTE_USER)
    return seed.decode(), public_key_of(seed.decode())


def public_key_of(seed: str) -> str:
    """The public key `U...` of a user seed; a seed that is not one is an error saying so."""
    try:
        kp = nkeys.from_seed(seed.strip().encode())
        public = str(kp.public_key.decode())
    except Exception as exc:  # nkeys raises its own error classes and binascii errors
        raise NatsAuthError(f"not an nkey seed ({type(exc).__name__}): expected SU...") from None
    if not public.startswith("U"):
        raise NatsAuthError(f"nkey seed is for a {public[:1]!r} key, not a user (U...)")
    return public


def users(control_public_key: str, agents: Iterable[tuple[str, str]]) -> list[User]:
    """The control plane's user plus one user a (tenant, agent public key), in that order."""
    out = [User(_user_key(control_public_key, "control plane"), control_plane_permissions())]
    for tenant, key in agents:
        out.append(User(_user_key(key, f"tenant {tenant!r} agent"), agent_permissions(tenant)))
    return out


def _user_key(key: str, what: str) -> str:
    if not (key.startswith("U") and len(key) == 56 and key.isalnum() and key.isupper()):
        raise NatsAuthError(f"{what} key {key!r} is not an nkey user public key (U..., 56 characters)")
    return key


def _value(v: Any) -> str:
    return json.dumps(v)  # nats-server's config reads JSON values


def render_authorization(user_list: Iterable[User]) -> str:
    """The authorization block (the include the store rewrites): nkey users and their permissions."""
    lines = ["authorization {", "  users = ["]
    for u in user_list:
        lines.append(f"    {{nkey: {_value(u.public_key)}, permissions: {_value(u.permissions)}}}")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def render_config(port: int, store_dir: str, auth_include: str, *, pid_file: str = "") -> str:
    """A nats-server config: loopback listener, JetStream in `store_dir`, the authorization from
    `auth_include` (rewritten, then reloaded). nats-server reads an include relative to the config
    file's folder, even one written absolute, so `auth_include` must be a relative path."""
    if auth_include.startswith("/") or ".." in Path(auth_include).parts:
        raise NatsAuthError(f"auth include {auth_include!r} must be a path inside the config file's folder")
    lines = [
        "# generated by Trellis (trellis_core.nats_auth): do not edit, it is rewritten",
        f'listen: "127.0.0.1:{port}"',
        f"jetstream {{ store_dir: {_value(store_dir)} }}",
    ]
    if pid_file:
        lines.append(f"pid_file: {_value(pid_file)}")
    lines += [f"include {_value(auth_include)}", ""]
    return "\n".join(lines)
