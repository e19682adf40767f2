"""The activities of a `workflows` schedule's slot (RunPurpose.scheduled_tasks): the schedule's
tasks, compiled as those of a day-2 action of type `workflows` on the deployed environment
(docs/schedules.md)."""

from __future__ import annotations

from trellis_core.workflow import Activity
from trellis_templates.action_compile import found_action_activities
from trellis_templates.actions import FoundAction
from trellis_templates.documents import EnvironmentAction, Schedule
from trellis_templates.errors import Problems, Source, closest
from trellis_templates.graph import Dependencies
from trellis_templates.planning import Plans
from trellis_templates.resolved import RunInfo
from trellis_templates.schedules import WORKFLOWS


def find_schedule(planned: Plans, name: str, problems: Problems) -> tuple[Schedule, Source, int] | None:
    """The schedule `name` as the environment runs it (the Environment's over the template's of
    the same name), its document's source and index; None with the problem reported."""
    documents = planned.variables.documents
    written = [
        *((s, documents.template_source, i) for i, s in enumerate(documents.template.spec.schedules)),
        *((s, documents.environment_source, i) for i, s in enumerate(documents.environment.spec.schedules)),
    ]
    matches = [entry for entry in written if entry[0].name == name]
    environment = documents.environment.metadata.name
    if not matches:
        names = list(dict.fromkeys(s.name for s, _, _ in written))
        listed = f"its schedules: {', '.join(names)}" if names else "its templates declare no schedules"
        message = f"environment {environment!r} has no schedule {name!r} ({listed})"
        problems.error(None, (), message, closest(name, names))
        return None
    schedule, source, index = matches[-1]  # the Environment's replaces the template's
    if schedule.type != WORKFLOWS:
        problems.error(
            source,
            ("spec", "schedules", index, "type"),
            f"schedule {name!r} of environment {environment!r} is of type {schedule.type}: it runs no tasks",
            "only a schedule of type workflows runs its tasks on the deployed environment",
        )
        return None
    return schedule, source, index


def scheduled_task_activities(
    planned: Plans, dependencies: Dependencies, *, info: RunInfo, problems: Problems
) -> tuple[Activity, ...] | None:
    """The tasks of the `workflows` schedule the run names, as an EnvironmentTemplate's action of
    type `workflows` of the schedule's name (its outputs: `resource.<schedule>.output`); None with
    the problems reported at the schedule's path."""
    found = find_schedule(planned, info.purpose.scheduled_tasks, problems)
    if found is None:
        return None
    schedule, source, index = found
    if schedule.workflows is None or not schedule.workflows.tasks:
        return None  # reported by check_schedules at spec.schedules[i].workflows
    action = EnvironmentAction(name=schedule.name, type="workflows", workflows=schedule.workflows)
    as_action = FoundAction(action=action, source=source, path=("spec", "schedules", index))
    return found_action_activities(planned, dependencies, as_action, info=info, problems=problems)
