"""Checks of what is parsed now and run later: schedules and actions."""

from __future__ import annotations

import re
from collections.abc import Sequence

from trellis_templates.documents import Schedule
from trellis_templates.errors import Path, Problems, Source

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?LW#-]+$")
_TTL = re.compile(r"^(\d+[mhd])+$")


def check_schedules(schedules: Sequence[Schedule], source: Source, problems: Problems) -> None:
    """Schedules are run by a later service; their names and cron expressions are checked now."""
    unique_names([s.name for s in schedules], source, ("spec", "schedules"), "schedule", problems)
    for index, schedule in enumerate(schedules):
        cadence, path = schedule.cadence, ("spec", "schedules", index, "cadence")
        if not cadence.cron_expression and not cadence.time_to_live:
            problems.error(source, path, "a schedule needs cadence.cronExpression or cadence.timeToLive")
            continue
        fields = cadence.cron_expression.split()
        if cadence.cron_expression and (len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields)):
            problems.error(
                source,
                (*path, "cronExpression"),
                f"{cadence.cron_expression!r} is not a cron expression",
                "five fields: minute hour day-of-month month day-of-week, e.g. 0 2 * * 1-5",
            )
        if cadence.time_to_live and not _TTL.match(cadence.time_to_live):
            problems.error(
                source,
                (*path, "timeToLive"),
                f"{cadence.time_to_live!r} is not a duration",
                "hours or days, e.g. 8h, 2d",
            )


def unique_names(names: list[str], source: Source, path: Path, what: str, problems: Problems) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            problems.error(source, (*path, index, "name"), f"duplicate {what} name {name!r}")
        seen.add(name)
