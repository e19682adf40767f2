"""A drift check's plan: `plan -detailed-exitcode`, then `show -json` of the plan file, read here
into what the check reports (`driftChanges`, `driftResources`, `driftOutputs`, `driftSummary`).

The plan's exit code says whether anything would change (0 no, 2 yes, anything else: the plan
failed); the JSON plan says what: resources the refresh found changed outside OpenTofu/Terraform
(`resource_drift`), resources the plan would change (`resource_changes`) and outputs whose values
would change (`output_changes`).
"""

from __future__ import annotations

from typing import Any

from trellis_agent.executors.base import Outcome

# "$0" is the binary, "$@" the plan's arguments; the outputs file gets the exit code and the plan.
DRIFT_PLAN_SCRIPT = r"""
plan_file="$1"; shift
"$0" "$@"; rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then exit "$rc"; fi
printf '{"detailedExitcode": %s, "plan": ' "$rc" > "$TRELLIS_OUTPUTS"
"$0" show -json -no-color "$plan_file" >> "$TRELLIS_OUTPUTS" || exit 1
printf '}' >> "$TRELLIS_OUTPUTS"
"""
_UNCHANGED = ({"no-op"}, {"read"})
MAX_LISTED = 200  # addresses kept in the report; the summary counts them all


def drift_report(written: dict[str, Any]) -> Outcome:
    """The check's outputs from what the drift plan script wrote, or why they cannot be read."""
    code, plan = written.get("detailedExitcode"), written.get("plan")
    if code not in (0, 2) or not isinstance(plan, dict):
        return Outcome.failed("the drift plan wrote no exit code and JSON plan (`show -json` failed?)", retryable=False)
    drifted = _changed(plan.get("resource_drift"))
    changing = _changed(plan.get("resource_changes"))
    resources = list(dict.fromkeys([*drifted, *changing]))
    outputs = sorted(
        name
        for name, change in (plan.get("output_changes") or {}).items()
        if isinstance(change, dict) and set(change.get("actions") or ["no-op"]) not in _UNCHANGED
    )
    changes = code == 2 or bool(resources or outputs)
    return Outcome.succeeded(
        {
            "driftChanges": "yes" if changes else "no",
            "driftResources": resources[:MAX_LISTED],
            "driftOutputs": outputs,
            "driftSummary": summary(resources, outputs, changes=changes),
        },
        exit_code=0,
    )


def _changed(entries: Any) -> list[str]:
    """Addresses of the entries whose actions change something."""
    found: list[str] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        actions = set((entry.get("change") or {}).get("actions") or ["no-op"])
        if actions not in _UNCHANGED and isinstance(entry.get("address"), str):
            found.append(entry["address"])
    return found


def summary(resources: list[str], outputs: list[str], *, changes: bool) -> str:
    if not changes:
        return "no changes: the infrastructure matches the state"
    parts = [
        f"{len(resources)} resource(s) differ: {', '.join(resources[:10])}{' …' if len(resources) > 10 else ''}"
        if resources
        else "the plan has changes"
    ]
    if outputs:
        parts.append(f"outputs that would change: {', '.join(outputs)}")
    return "; ".join(parts)
