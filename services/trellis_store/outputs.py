"""Sensitive IaC outputs: sealed at rest, masked in every answer, opened only for deploy.record.

OpenTofu's `output -json` gives each output as `{"value", "type", "sensitive"}`. An output whose
`sensitive` is true is a secret (a database password, a private key): the projection keeps the
run's outputs (and so the environment's deploy outputs, copied from them) with the value sealed
under the store's seal key as `{"type", "sensitive": true, "sealed": "v1:..."}`, and activity
outputs and event bodies with the value masked, since nothing reads them back. Every API
answer masks the value, whatever is stored (rows written before sealing, or by a projection
without a seal key, hold it in clear, like that projection's requested variables); only
deploy.record, read by the compiler for the next run's expressions, opens it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from trellis_core.workflow import LastDeploy, Workflow
from trellis_store.api import MASK

SEALED = "sealed"
_json = msgspec.json.Encoder()
_any = msgspec.json.Decoder()


def is_sensitive(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("sensitive") is True


def _masked(entry: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in entry.items() if k != SEALED}
    kept["value"] = MASK
    return kept


def masked_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """One activity's outputs (name -> entry) with every sensitive value masked."""
    if not any(is_sensitive(e) for e in outputs.values()):
        return outputs
    return {name: _masked(e) if is_sensitive(e) else e for name, e in outputs.items()}


def masked_resources(outputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run or environment outputs (resource -> name -> entry) with every sensitive value masked."""
    return {resource: masked_outputs(named) for resource, named in outputs.items()}


def masked_last_deploy(workflow: Workflow) -> LastDeploy | None:
    """A workflow's `last_deploy` (a destroy's: deploy.record's outputs, opened) masked."""
    last = workflow.last_deploy
    if last is None or not last.outputs:
        return last
    return msgspec.structs.replace(last, outputs=masked_resources(last.outputs))


def sealed_resources(
    outputs: dict[str, dict[str, Any]], seal: Callable[[str], str] | None
) -> dict[str, dict[str, Any]]:
    """Run outputs as `runs.outputs` keeps them: sensitive values sealed (the JSON of the value);
    in clear only with no seal key, as `sealed_variables` keeps requested variables."""
    if seal is None:
        return outputs

    def one(entry: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in entry.items() if k != "value"}
        kept[SEALED] = seal(_json.encode(entry.get("value")).decode())
        return kept

    return {
        resource: {name: one(e) if is_sensitive(e) else e for name, e in named.items()}
        for resource, named in outputs.items()
    }


def opened_resources(outputs: dict[str, dict[str, Any]], open_: Callable[[str], str]) -> dict[str, dict[str, Any]]:
    """Stored outputs with sealed values opened back to `{"value", "type", "sensitive"}`; raises
    SealError (from `open_`) or msgspec.DecodeError if one does not open."""

    def one(entry: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in entry.items() if k != SEALED}
        kept["value"] = _any.decode(open_(entry[SEALED]))
        return kept

    return {
        resource: {
            name: one(e) if isinstance(e, dict) and isinstance(e.get(SEALED), str) else e for name, e in named.items()
        }
        for resource, named in outputs.items()
    }
