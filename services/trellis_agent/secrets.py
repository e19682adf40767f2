"""The agent's side of sealed values: its tenant's data keys, and opening a work item's tokens.

The agent is the one place a sealed token is opened. It never holds the control plane's master
key: it asks for its tenant's data keys on core NATS (`trellis.<tenant>.keys.get`, answered by the
state store), lazily (only when a work item holds a token), caches them, and asks once more when
a token names a key id it lacks (a rotation happened since). Opening replaces every token in the
activity's spec and inputs by its plain text right before the executor runs, and collects the
plain texts, so the log sink, failure reasons, outputs and the agent's own log lines can mask them.
An error here names the field and the key id, never a value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors

from trellis_core import sealed, subjects
from trellis_core.errors import ConfigError
from trellis_core.events import WorkItem
from trellis_core.workflow import Activity

KEYS_TIMEOUT_SECONDS = 5.0
Request = Callable[[str, bytes, float], Awaitable[bytes]]

_decode_answer = msgspec.json.Decoder(sealed.KeysAnswer).decode


class KeysUnavailable(Exception):
    """The tenant's data keys could not be had: no control plane answered, or it refused."""


class OpenFailed(Exception):
    """A token of the work item does not open; the message names the field and the key id."""


def nats_request(nc: Any) -> Request:
    """A `Request` over a nats.py client (`Bus.nc`)."""

    async def request(subject: str, payload: bytes, wait: float) -> bytes:
        msg = await nc.request(subject, payload, timeout=wait)
        return bytes(msg.data)

    return request


class AgentKeys:
    """One tenant's data keys as the agent holds them: fetched on first need, cached, fetched
    again once when a token names a key id the cache lacks."""

    def __init__(self, tenant: str, request: Request, *, timeout: float = KEYS_TIMEOUT_SECONDS) -> None:
        self.tenant = tenant
        self._request = request
        self._timeout = timeout
        self._keys: sealed.TenantKeys | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _fetch(self) -> sealed.TenantKeys:
        subject = subjects.keys_request(self.tenant)
        self.fetches += 1
        try:
            data = await self._request(subject, b"", self._timeout)
        except nats.errors.NoRespondersError:
            raise KeysUnavailable(f"no control plane answered {subject}: is the state store running?") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise KeysUnavailable(
                f"no control plane answered {subject} within {self._timeout:g}s: is the state store running?"
            ) from None
        try:
            answer = _decode_answer(data)
        except msgspec.DecodeError as exc:
            raise KeysUnavailable(f"the answer on {subject} is not a KeysAnswer: {exc}") from None
        if answer.error or answer.material is None:
            raise KeysUnavailable(f"the control plane refused {subject}: {answer.error or 'no key material'}")
        if answer.material.tenant != self.tenant:
            raise KeysUnavailable(f"the answer on {subject} holds keys of tenant {answer.material.tenant!r}")
        try:
            return sealed.TenantKeys.from_material(answer.material)
        except (sealed.SealError, ConfigError) as exc:
            raise KeysUnavailable(f"the answer on {subject}: {exc}") from None

    async def keys(self, need: set[str] | frozenset[str] = frozenset()) -> sealed.TenantKeys:
        """The tenant's keys, holding every key id in `need` if the control plane has it (asked
        again once when the cache lacks one; a kid it still lacks fails later, when opening)."""
        async with self._lock:
            if self._keys is None or not need <= self._keys.kids:
                self._keys = await self._fetch()
            return self._keys


def _open_field(keys: sealed.TenantKeys, value: Any, path: str, opened: set[str]) -> Any:
    """`value` opened, field by field, so that an error names the path of the token's field."""
    if isinstance(value, dict):
        return {
            _open_field(keys, k, f"{path} (a key)", opened): _open_field(keys, v, f"{path}.{k}", opened)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_open_field(keys, v, f"{path}[{n}]", opened) for n, v in enumerate(value))
    if isinstance(value, str):
        try:
            return keys.open_text(value, opened)
        except sealed.SealError:
            kids = ", ".join(sorted(sealed.token_kids(value))) or "?"
            bad = next((m["kid"] for m in sealed.TOKEN_PATTERN.finditer(value) if not _opens(keys, m[0])), kids)
            raise OpenFailed(
                f"the sealed value in {path} (key {bad}) does not open for tenant {keys.tenant!r}: "
                + (
                    "this agent's keys lack that key id (dropped too early, or another installation's)"
                    if bad not in keys.kids
                    else "another tenant's, or altered"
                )
            ) from None
    return value


def _opens(keys: sealed.TenantKeys, token: str) -> bool:
    try:
        keys.open(token)
    except sealed.SealError:
        return False
    return True


def open_activity(keys: sealed.TenantKeys, activity: Activity, opened: set[str]) -> Activity:
    """`activity` with every token in its spec and inputs opened; the plain texts go to `opened`.
    The names of env entries, headers and inputs that held a token join `activity.sensitive`, so
    the executors treat them as they treat a value named sensitive (a Kubernetes Secret, a
    file instead of a container variable, masking by name)."""
    spec_type = type(activity.spec)
    raw_spec = msgspec.to_builtins(activity.spec)
    raw_inputs = msgspec.to_builtins(activity.inputs)
    held = {k for k, v in raw_inputs.items() if sealed.contains_token(v)}
    for field in ("env", "headers"):
        entries = raw_spec.get(field) if isinstance(raw_spec, dict) else None
        if isinstance(entries, dict):
            held |= {k for k, v in entries.items() if sealed.contains_token(v)}
    spec = _open_field(keys, raw_spec, "spec", opened)
    inputs = _open_field(keys, raw_inputs, "inputs", opened)
    try:
        new_spec = msgspec.convert(spec, spec_type)
    except msgspec.ValidationError as exc:  # a secret that breaks the spec's own typing
        raise OpenFailed(f"the spec does not hold its shape once opened: {sealed.MASK}: {exc}") from None
    sensitive = (*activity.sensitive, *sorted(held - set(activity.sensitive)))
    return msgspec.structs.replace(activity, spec=new_spec, inputs=inputs, sensitive=sensitive)


async def open_work(agent_keys: AgentKeys, work: WorkItem, opened: set[str]) -> WorkItem:
    """`work` with its activity's tokens opened (no key is fetched when it holds none)."""
    activity = work.activity
    if sealed.TOKEN_MARK not in msgspec.json.encode((activity.spec, activity.inputs)):
        return work  # the common case, told at C speed: no token anywhere in the spec or inputs
    kids = sealed.token_kids(msgspec.to_builtins(activity.spec)) | sealed.token_kids(
        msgspec.to_builtins(activity.inputs)
    )
    if not kids:
        return work
    keys = await agent_keys.keys(kids)
    return msgspec.structs.replace(work, activity=open_activity(keys, activity, opened))


def seal_outputs(
    keys: sealed.TenantKeys, outputs: dict[str, Any], contains_secret: Callable[[str], bool]
) -> dict[str, Any]:
    """Outputs as they may leave the agent: an output the tool marked sensitive (`{"value": ..,
    "sensitive": true}`) has its value sealed (a non-string JSON-encoded first); a string anywhere
    in an output that holds an opened secret is sealed, and a tool-shaped output holding one is
    marked sensitive."""

    def seal_leaves(value: Any) -> tuple[Any, bool]:
        if isinstance(value, str):
            if not sealed.is_token(value) and contains_secret(value):
                return keys.seal(value), True
            return value, False
        if isinstance(value, dict):
            found = False
            out: dict[str, Any] = {}
            for k, v in value.items():
                out[k], hit = seal_leaves(v)
                found = found or hit
            return out, found
        if isinstance(value, list | tuple):
            pairs = [seal_leaves(v) for v in value]
            return [v for v, _ in pairs], any(h for _, h in pairs)
        return value, False

    sealed_outputs: dict[str, Any] = {}
    for name, value in outputs.items():
        if isinstance(value, dict) and "value" in value and "sensitive" in value:
            inner = value["value"]
            leaked = seal_leaves(inner)[1]
            if value.get("sensitive") is True or leaked:
                text = inner if isinstance(inner, str) else msgspec.json.encode(inner).decode()
                sealed_outputs[name] = {**value, "value": keys.seal(text), "sensitive": True}
                continue
        sealed_outputs[name] = seal_leaves(value)[0]
    return sealed_outputs


__all__ = ["AgentKeys", "KeysUnavailable", "OpenFailed", "nats_request", "open_activity", "open_work", "seal_outputs"]
