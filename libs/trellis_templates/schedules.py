"""When an environment's schedules fire: the EnvironmentTemplate's schedules with the Environment's
over them and its `scheduleOptouts` checked against the template's `optOutOptions`, and the next
due time of each (cron by cronsim in its `cronTimezone`, a time to live as a duration). Pure: time
is an argument."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from trellis_templates.documents import (
    BoolValue,
    Environment,
    EnvironmentTemplate,
    IntValue,
    OptOutOptions,
    Schedule,
    ScheduleOptout,
    TextValue,
)
from trellis_templates.errors import Path, Problems, Source, closest

STAGGER_WINDOW = timedelta(minutes=10)  # a staggered schedule fires this much after its slot, at most
_DURATION = re.compile(r"^(\d+[smhd])+$")
_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=3660)  # ten years: longer is a mistake (and beyond what a timestamp holds)
DURATION_HINT = "a number and a unit (s, m, h, d), e.g. 30m, 8h, 2d, 1d12h; at most 3660d"
CRON_HINT = "five fields: minute hour day-of-month month day-of-week, e.g. 0 2 * * 1-5"
ScheduleType = Literal["deploy", "destroy", "detectDrift", "workflows"]
DETECT_DRIFT: Final = "detectDrift"  # a drift check of the deployed environment on a cron (docs/drift.md)
WORKFLOWS: Final = "workflows"  # tasks run on the deployed environment on a cron (RunPurpose.scheduled_tasks)
ON_DEPLOYED: Final = frozenset({DETECT_DRIFT, WORKFLOWS})  # a slot while not deployed is skipped


class EffectiveSchedule(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One schedule as it runs for one environment."""

    name: str
    type: ScheduleType
    cron: str = ""  # empty: a time to live
    timezone: str = "UTC"
    ttl_seconds: int = 0
    staggered: bool = False
    extend_on_deploy: bool = False  # ttl: a later successful deploy restarts it
    allow_opt_out: bool = False
    max_opt_out_seconds: int = 0  # one opt-out's longest postponement; 0: no limit
    max_opt_outs: int = 0  # opt-outs in all; 0: no limit
    approval: bool = False
    optouts: tuple[int, ...] = ()  # the Environment's opt-outs of it, in seconds, in order
    variables: dict[str, str] = {}  # the schedule's `variables`: its runs' values over the environment's
    expiry_hooks: bool = False  # ttl: the template has onExpiring hooks, run when the expiry is announced

    @property
    def kind(self) -> Literal["cron", "ttl"]:
        return "cron" if self.cron else "ttl"

    @property
    def definition(self) -> str:
        """A digest of what decides its due times (not its opt-outs): a change re-arms it."""
        fields = (self.type, self.cron, self.timezone, self.ttl_seconds, self.staggered, self.extend_on_deploy)
        return hashlib.sha256(msgspec.json.encode(fields)).hexdigest()[:32]


def parse_duration(text: str) -> timedelta | None:
    """`8h`, `2d`, `1d12h`, `30m` as a timedelta; None when it is not a positive duration of at
    most MAX_DURATION."""
    if not isinstance(text, str) or len(text) > 64 or not _DURATION.match(text):
        return None
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))
    return timedelta(seconds=seconds) if 0 < seconds <= MAX_DURATION.total_seconds() else None


def format_duration(seconds: int) -> str:
    """`93600` -> `1d2h`: the shortest spelling parse_duration reads back."""
    parts, rest = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


def _flag(value: bool | BoolValue) -> bool:
    return value.value if isinstance(value, BoolValue) else bool(value)


def _text(value: str | TextValue) -> str:
    return value.value if isinstance(value, TextValue) else value


def _count(value: int | IntValue) -> int:
    return value.value if isinstance(value, IntValue) else value


def timezone_of(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def check_schedule_list(schedules: Sequence[Schedule], source: Source | None, problems: Problems) -> None:
    """Every problem of one document's `spec.schedules`, each at its path."""
    for index, schedule in enumerate(schedules):
        path: Path = ("spec", "schedules", index)
        _check_tasks(schedule, source, path, problems)
        _check_cadence(schedule, source, (*path, "cadence"), problems)
        if schedule.type == DETECT_DRIFT and schedule.variables:
            problems.error(
                source,
                (*path, "variables"),
                f"schedule {schedule.name!r} is a detectDrift schedule: it takes no variables",
                "a drift check plans with the variables of the environment's last deploy; leave variables out",
            )
        if schedule.opt_out_options is not None:
            _check_limits(schedule.opt_out_options, source, (*path, "optOutOptions"), problems)


def _check_tasks(schedule: Schedule, source: Source | None, path: Path, problems: Problems) -> None:
    """A `workflows` schedule has tasks (their own problems are the compiler's, as an action's);
    no other schedule has any."""
    tasks = schedule.workflows.tasks if schedule.workflows is not None else []
    if schedule.type == WORKFLOWS and not tasks:
        problems.error(
            source,
            (*path, "workflows"),
            f"schedule {schedule.name!r} of type workflows has no tasks",
            "give workflows.tasks: [{name, type, options}] (as a custom resource's tasks)",
        )
    elif schedule.type != WORKFLOWS and schedule.workflows is not None:
        problems.error(
            source,
            (*path, "workflows"),
            f"schedule {schedule.name!r} of type {schedule.type} runs no tasks",
            "tasks belong to a schedule of type workflows",
        )


def _check_cadence(schedule: Schedule, source: Source | None, path: Path, problems: Problems) -> None:
    cadence = schedule.cadence
    if not cadence.cron_expression and not cadence.time_to_live:
        problems.error(source, path, "a schedule needs cadence.cronExpression or cadence.timeToLive")
        return
    if cadence.cron_expression and cadence.time_to_live:
        problems.error(source, path, "a schedule has cadence.cronExpression or cadence.timeToLive, not both")
    if cadence.cron_expression:
        try:
            CronSim(cadence.cron_expression, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            problems.error(
                source,
                (*path, "cronExpression"),
                f"{cadence.cron_expression!r} is not a cron expression: {str(exc).lower()}",
                CRON_HINT,
            )
        if timezone_of(cadence.cron_timezone) is None:
            problems.error(
                source,
                (*path, "cronTimezone"),
                f"unknown time zone {cadence.cron_timezone!r}",
                "an IANA name such as UTC, Europe/Berlin, America/New_York",
            )
    if cadence.extend_on_deploy and not cadence.time_to_live:
        problems.error(source, (*path, "extendOnDeploy"), "extendOnDeploy applies to a timeToLive only")
    if cadence.time_to_live:
        if parse_duration(cadence.time_to_live) is None:
            problems.error(source, (*path, "timeToLive"), f"{cadence.time_to_live!r} is not a duration", DURATION_HINT)
        if schedule.type in ON_DEPLOYED:
            problems.error(
                source,
                (*path, "timeToLive"),
                f"schedule {schedule.name!r} is a {schedule.type} schedule: it runs on a cronExpression, "
                "not a timeToLive",
                f"it recurs, e.g. cadence: {{cronExpression: '0 6 * * *'}}; {CRON_HINT}",
            )
        elif schedule.type != "destroy":
            problems.error(source, (*path, "timeToLive"), "a timeToLive schedule must be of type destroy")


def _check_limits(options: OptOutOptions, source: Source | None, path: Path, problems: Problems) -> None:
    limit = _text(options.max_allowed_duration)
    if limit and parse_duration(limit) is None:
        problems.error(source, (*path, "maxAllowedDuration"), f"{limit!r} is not a duration", DURATION_HINT)
    if _count(options.max_allowed_times) < 0:
        problems.error(source, (*path, "maxAllowedTimes"), "maxAllowedTimes must be 0 (no limit) or more")


def effective_schedules(
    template: EnvironmentTemplate,
    environment: Environment,
    problems: Problems,
    *,
    template_source: Source | None = None,
    environment_source: Source | None = None,
) -> tuple[EffectiveSchedule, ...]:
    """The environment's schedules: the template's, replaced by name or added to by the
    Environment's (an Environment may not loosen a template schedule's optOutOptions), with the
    Environment's opt-outs checked against the limits. Invalid schedules are left out (problems)."""
    check_schedule_list(template.spec.schedules, template_source, problems)
    check_schedule_list(environment.spec.schedules, environment_source, problems)
    merged = merge_schedules(template, environment, environment_source, problems)
    optouts = check_optouts(
        environment.spec.schedule_optouts, {n: lim for n, (_, lim) in merged.items()}, environment_source, problems
    )
    out = []
    for name, (schedule, limits) in merged.items():
        made = _effective(schedule, limits, optouts.get(name, ()))
        if made is not None and made.ttl_seconds and template.spec.hooks.on_expiring:
            made = msgspec.structs.replace(made, expiry_hooks=True)
        if made is not None:
            out.append(made)
    return tuple(out)


def merge_schedules(
    template: EnvironmentTemplate, environment: Environment, environment_source: Source | None, problems: Problems
) -> dict[str, tuple[Schedule, OptOutOptions]]:
    """Each schedule by name with its opt-out limits: the template's, then the Environment's over
    them (a template schedule's limits stay the template's)."""
    merged: dict[str, tuple[Schedule, OptOutOptions]] = {
        s.name: (s, s.opt_out_options or OptOutOptions()) for s in template.spec.schedules
    }
    for index, schedule in enumerate(environment.spec.schedules):
        inherited = merged.get(schedule.name)
        if inherited is not None and schedule.opt_out_options is not None:
            problems.error(
                environment_source,
                ("spec", "schedules", index, "optOutOptions"),
                f"schedule {schedule.name!r} is the template's: its optOutOptions are the template's to set",
            )
        limits = inherited[1] if inherited is not None else schedule.opt_out_options or OptOutOptions()
        merged[schedule.name] = (schedule, limits)
    return merged


def check_environment_optouts(
    template: EnvironmentTemplate, environment: Environment, environment_source: Source | None, problems: Problems
) -> None:
    """The Environment's `scheduleOptouts` against the schedules and limits it ends up with."""
    merged = merge_schedules(template, environment, environment_source, problems)
    limits = {name: options for name, (_, options) in merged.items()}
    check_optouts(environment.spec.schedule_optouts, limits, environment_source, problems)


def _effective(schedule: Schedule, limits: OptOutOptions, optouts: tuple[int, ...]) -> EffectiveSchedule | None:
    if schedule.type == DETECT_DRIFT and schedule.variables:
        return None
    if schedule.type == WORKFLOWS and (schedule.workflows is None or not schedule.workflows.tasks):
        return None
    cadence = schedule.cadence
    ttl = parse_duration(cadence.time_to_live) if cadence.time_to_live else None
    if cadence.cron_expression:
        if cadence.time_to_live or timezone_of(cadence.cron_timezone) is None or not _cron_ok(cadence.cron_expression):
            return None
    elif ttl is None or schedule.type != "destroy":
        return None
    return EffectiveSchedule(
        name=schedule.name,
        type=schedule.type,
        cron=cadence.cron_expression,
        timezone=cadence.cron_timezone if cadence.cron_expression else "UTC",
        ttl_seconds=int(ttl.total_seconds()) if ttl is not None else 0,
        staggered=_flag(cadence.staggered),
        extend_on_deploy=cadence.extend_on_deploy and ttl is not None,
        optouts=optouts,
        variables=run_variables(schedule),
        **_limits(limits),
    )


def run_variables(schedule: Schedule) -> dict[str, str]:
    """A schedule's variables as a run request carries them: text as it is, other values as JSON."""
    return {
        v.name: v.value if isinstance(v.value, str) else msgspec.json.encode(v.value).decode()
        for v in schedule.variables
        if v.value is not None
    }


def _cron_ok(expression: str) -> bool:
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError:
        return False
    return True


def check_optouts(
    optouts: Sequence[ScheduleOptout],
    limits: dict[str, OptOutOptions],
    source: Source | None,
    problems: Problems,
) -> dict[str, tuple[int, ...]]:
    """The opt-outs within their schedule's limits, by schedule, in seconds; every other one is a
    problem at `spec.scheduleOptouts[i]`."""
    taken: dict[str, list[int]] = {}
    for index, optout in enumerate(optouts):
        path: Path = ("spec", "scheduleOptouts", index)
        options = limits.get(optout.name)
        if options is None:
            problems.error(
                source, (*path, "name"), f"no schedule {optout.name!r} to opt out of", closest(optout.name, limits)
            )
            continue
        duration = parse_duration(optout.duration)
        if duration is None:
            problems.error(source, (*path, "duration"), f"{optout.duration!r} is not a duration", DURATION_HINT)
            continue
        why = optout_refusal(
            optout.name, options, int(duration.total_seconds()), already=len(taken.get(optout.name, ()))
        )
        if why:
            problems.error(source, path, why)
            continue
        taken.setdefault(optout.name, []).append(int(duration.total_seconds()))
    return {name: tuple(seconds) for name, seconds in taken.items()}


def optout_refusal(name: str, options: OptOutOptions, seconds: int, *, already: int) -> str:
    """Why one more opt-out of `seconds` is refused after `already` ones ("" when it is allowed)."""
    schedule = EffectiveSchedule(name=name, type="destroy", ttl_seconds=1, **_limits(options))
    return refusal(schedule, seconds, already=already)


def _limits(options: OptOutOptions) -> dict[str, Any]:
    text = _text(options.max_allowed_duration)
    limit = parse_duration(text) if text else None
    return {
        "allow_opt_out": _flag(options.allow_opt_out),
        "max_opt_out_seconds": int(limit.total_seconds()) if limit is not None else 0,
        "max_opt_outs": max(_count(options.max_allowed_times), 0),
        "approval": _flag(options.approval),
    }


def refusal(schedule: EffectiveSchedule, seconds: int, *, already: int) -> str:
    """Why postponing `schedule` by `seconds` more, after `already` opt-outs, is refused ("": allowed)."""
    if not schedule.allow_opt_out:
        return f"schedule {schedule.name!r} does not allow opt-outs (optOutOptions.allowOptOut is not true)"
    if schedule.max_opt_out_seconds and seconds > schedule.max_opt_out_seconds:
        return (
            f"{format_duration(seconds)} is beyond schedule {schedule.name!r}'s "
            f"optOutOptions.maxAllowedDuration {format_duration(schedule.max_opt_out_seconds)}"
        )
    if schedule.max_opt_outs and already >= schedule.max_opt_outs:
        return (
            f"schedule {schedule.name!r} was opted out of {already} time(s): "
            f"optOutOptions.maxAllowedTimes is {schedule.max_opt_outs}"
        )
    return ""


def stagger_offset(key: str, schedule: str) -> timedelta:
    """A deterministic offset in [0, STAGGER_WINDOW) for `key` (tenant/environment) and `schedule`:
    environments sharing a cron do not all fire in the same second."""
    digest = hashlib.sha256(f"{key}/{schedule}".encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % int(STAGGER_WINDOW.total_seconds()))


def next_due(
    schedule: EffectiveSchedule, after: datetime, *, key: str = "", not_before: datetime | None = None
) -> datetime | None:
    """The first firing of a cron schedule strictly after `after` (and at or after `not_before`: an
    opt-out's end), in UTC; a staggered one shifted by its offset for `key`. None for a time to live
    (its expiry follows the deploy, not a clock)."""
    if not schedule.cron:
        return None
    offset = stagger_offset(key, schedule.name) if schedule.staggered else timedelta(0)
    start = after - offset
    if not_before is not None and not_before - offset - timedelta(seconds=1) > start:
        start = not_before - offset - timedelta(seconds=1)
    zone = ZoneInfo(schedule.timezone)
    # When clocks fall back, cronsim gives a fixed-time slot of the repeated hour as its first pass
    # even when `start` is in the second: that slot is already past, and firing it would move
    # next_due_at nowhere (the loop would claim it again every tick). Take the first slot after.
    for slot in CronSim(schedule.cron, start.astimezone(zone)):
        if slot.astimezone(UTC) > start:
            return slot.astimezone(UTC) + offset
    return None  # cronsim's iteration ends only for expressions with no future date
