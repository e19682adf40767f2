"""Checks of what is parsed now and run later: schedules and actions."""

from __future__ import annotations

from collections.abc import Sequence

from trellis_templates.documents import Schedule
from trellis_templates.errors import Path, Problems, Source
from trellis_templates.schedules import check_schedule_list


def check_schedules(schedules: Sequence[Schedule], source: Source, problems: Problems) -> None:
    """A document's schedules: unique names, and each one's type, cadence and opt-out limits
    (trellis_templates.schedules, which also runs them)."""
    unique_names([s.name for s in schedules], source, ("spec", "schedules"), "schedule", problems)
    check_schedule_list(schedules, source, problems)


def unique_names(names: list[str], source: Source, path: Path, what: str, problems: Problems) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            problems.error(source, (*path, index, "name"), f"duplicate {what} name {name!r}")
        seen.add(name)
