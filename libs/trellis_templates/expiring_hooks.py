"""The EnvironmentTemplate's `onExpiring` hooks as activities: an expiry notice's run
(RunPurpose.expiring) is only these, started when a time to live's expiry is announced, before
the destroy (docs/schedules.md). Checked in every compile, run by expiry notices only."""

from __future__ import annotations

from trellis_core.workflow import Activity
from trellis_templates.documents import Hook
from trellis_templates.hooks import HookContext, hook_activity

EXPIRING_STAGE = "on-expiring"
_PATH = ("spec", "hooks", "onExpiring")


def expiring_hooks(context: HookContext, hooks: list[Hook]) -> list[Activity]:
    """The `onExpiring` hooks as activities, each after the one before it; problems reported at
    `spec.hooks.onExpiring[i]`."""
    out: list[Activity] = []
    seen: set[str] = set()
    deps: tuple[str, ...] = ()
    for index, hook in enumerate(hooks):
        if hook.name in seen:
            context.problems.error(
                context.source, (*_PATH, index, "name"), f"duplicate hook name {hook.name!r} in this list"
            )
            continue
        seen.add(hook.name)
        activity_id = f"environment/{EXPIRING_STAGE}/{hook.name}"
        activity = hook_activity(context, hook, (*_PATH, index), activity_id, stage=EXPIRING_STAGE, depends_on=deps)
        if activity is not None:
            out.append(activity)
            deps = (activity.id,)
    return out
