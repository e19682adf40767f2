"""Sensitive IaC outputs: sealed tokens at rest and in answers, never in clear.

OpenTofu's `output -json` gives each output as `{"value", "type", "sensitive"}`. The agent seals
the value of an output the tool marked sensitive (`{"value": "<token>", "sensitive": true}`), so
what the projection stores and every answer carries is the token (ciphertext is not a secret:
the gateway and the CLI mask tokens for display). An old agent may still send a sensitive value
in clear: the projection seals it (`seal_outputs`) before anything is stored. Answers keep
tokens and mask any sensitive value still in clear (rows written before sealing): defence in
depth, so a clear secret never leaves the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from trellis_core.sealed import is_token
from trellis_core.workflow import LastDeploy, Workflow
from trellis_store.api import MASK

Seal = Callable[[str], str]  # plain text -> token, under one tenant's current key
_json = msgspec.json.Encoder()


def is_sensitive(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("sensitive") is True


def _clear(entry: Any) -> bool:
    """A sensitive entry whose value is not (only) a token."""
    if not is_sensitive(entry):
        return False
    value = entry.get("value")
    return not (isinstance(value, str) and is_token(value))


def plain_text(value: Any) -> str:
    """What a sensitive value is sealed as: a string as it is, anything else as its JSON (as the
    agent seals it, so the opened token reads the same either way)."""
    return value if isinstance(value, str) else _json.encode(value).decode()


def seal_outputs(outputs: dict[str, Any], seal: Seal | None) -> dict[str, Any]:
    """One activity's outputs (name -> entry) with every sensitive value still in clear sealed;
    tokens stay. Without a way to seal (a projection built without keys: tests), masked."""
    if not any(_clear(e) for e in outputs.values()):
        return outputs

    def one(entry: dict[str, Any]) -> dict[str, Any]:
        value = MASK if seal is None else seal(plain_text(entry.get("value")))
        return {**{k: v for k, v in entry.items() if k != "sealed"}, "value": value}

    return {name: one(e) if _clear(e) else e for name, e in outputs.items()}


def seal_resources(outputs: dict[str, dict[str, Any]], seal: Seal | None) -> dict[str, dict[str, Any]]:
    """Run outputs (resource -> name -> entry) as `seal_outputs` keeps one activity's."""
    return {resource: seal_outputs(named, seal) for resource, named in outputs.items()}


def masked_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """One activity's outputs with every sensitive value still in clear masked (tokens stay)."""
    return seal_outputs(outputs, None)


def masked_resources(outputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run or environment outputs (resource -> name -> entry), as `masked_outputs`."""
    return {resource: masked_outputs(named) for resource, named in outputs.items()}


def masked_last_deploy(workflow: Workflow) -> LastDeploy | None:
    """A workflow's `last_deploy` (a destroy's: deploy.record's outputs) with any sensitive value
    in clear masked; tokens stay."""
    last = workflow.last_deploy
    if last is None or not last.outputs:
        return last
    return msgspec.structs.replace(last, outputs=masked_resources(last.outputs))
