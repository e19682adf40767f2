"""Schedules as they run for one environment: merged from the template and the Environment, opt-outs
within the template's limits, next due times in the schedule's time zone, staggering, and every bad
schedule reported at its path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from template_support import mutate, only, run

from trellis_templates.documents import Environment, EnvironmentTemplate
from trellis_templates.errors import Problems
from trellis_templates.schedules import (
    STAGGER_WINDOW,
    EffectiveSchedule,
    effective_schedules,
    format_duration,
    next_due,
    parse_duration,
    refusal,
    stagger_offset,
)

TEMPLATE_SCHEDULES = (
    "    - {name: team, options: {required: true}}",
    "    - {name: team, options: {required: true}}\n  schedules:\n"
    "    - {name: nightly, type: destroy, cadence: {cronExpression: '0 20 * * 1-5', cronTimezone: Europe/Berlin}}\n"
    "    - name: ttl\n      type: destroy\n      cadence: {timeToLive: 8h}\n"
    "      optOutOptions: {allowOptOut: {value: true}, maxAllowedDuration: 4h, maxAllowedTimes: 2}",
)


def with_schedules(*edits: tuple[str, str]) -> str:
    return mutate(TEMPLATE_SCHEDULES, *edits)


def with_optouts(*lines: str) -> str:
    return with_schedules(
        (
            "    - {name: team, value: a-team}\n",
            "    - {name: team, value: a-team}\n  scheduleOptouts:\n" + "".join(f"    - {line}\n" for line in lines),
        )
    )


def documents(text: str) -> tuple[EnvironmentTemplate, Environment]:
    from trellis_templates.loader import load_text
    from trellis_templates.validate import parse_documents

    problems = Problems()
    docs = parse_documents(load_text(text, "bundle.yaml", problems), problems)
    assert not problems.errors, problems.errors
    template = next(d.document for d in docs if isinstance(d.document, EnvironmentTemplate))
    environment = next(d.document for d in docs if isinstance(d.document, Environment))
    return template, environment


def test_durations_are_numbers_with_units_and_read_back() -> None:
    assert parse_duration("8h") == timedelta(hours=8)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("3660d") == timedelta(days=3660)
    for bad in ("", "8", "h", "-1h", "0h", "1w", "1.5h", " 8h", "3661d", "99999999999999999999d"):
        assert parse_duration(bad) is None, bad
    assert format_duration(36 * 3600) == "1d12h"
    assert format_duration(90) == "1m30s"


@given(st.integers(min_value=1, max_value=3660 * 86400))
def test_a_formatted_duration_parses_back_to_itself(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == timedelta(seconds=seconds)


def test_the_next_slot_is_strictly_after_in_the_schedules_time_zone() -> None:
    nightly = EffectiveSchedule(name="nightly", type="destroy", cron="0 20 * * 1-5", timezone="Europe/Berlin")
    friday_noon = datetime(2026, 12, 4, 11, 0, tzinfo=UTC)  # 12:00 in Berlin (CET, UTC+1)
    assert next_due(nightly, friday_noon) == datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
    assert next_due(nightly, datetime(2026, 12, 4, 19, 0, tzinfo=UTC)) == datetime(2026, 12, 7, 19, 0, tzinfo=UTC)
    summer = datetime(2026, 7, 1, 11, 0, tzinfo=UTC)  # CEST, UTC+2
    assert next_due(nightly, summer) == datetime(2026, 7, 1, 18, 0, tzinfo=UTC)


def test_an_optout_end_moves_the_next_slot_to_at_or_after_it() -> None:
    hourly = EffectiveSchedule(name="hourly", type="deploy", cron="0 * * * *")
    now = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    assert next_due(hourly, now) == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    assert next_due(hourly, now, not_before=now + timedelta(hours=3)) == datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    exactly = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    assert next_due(hourly, now, not_before=exactly) == exactly


def test_a_time_to_live_has_no_clock_slot() -> None:
    assert next_due(EffectiveSchedule(name="ttl", type="destroy", ttl_seconds=3600), datetime.now(UTC)) is None


def test_a_slot_in_the_hour_repeated_when_clocks_fall_back_fires_once_then_moves_on() -> None:
    """01:45 New York on 1 November 2026 happens at 05:45 UTC (EDT) and again at 06:45 (EST):
    it fires at the first; asked during the second pass, the next slot is the next day's, never
    one already past (which would fire on every tick of the loop)."""
    early = EffectiveSchedule(name="early", type="deploy", cron="45 1 * * *", timezone="America/New_York")
    first_pass = datetime(2026, 11, 1, 5, 10, tzinfo=UTC)
    assert next_due(early, first_pass) == datetime(2026, 11, 1, 5, 45, tzinfo=UTC)
    second_pass = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)  # 01:10 EST, after 01:45 EDT has fired
    assert next_due(early, second_pass) == datetime(2026, 11, 2, 6, 45, tzinfo=UTC)
    assert next_due(early, first_pass, not_before=second_pass) == datetime(2026, 11, 2, 6, 45, tzinfo=UTC)
    for minute in range(0, 24 * 60, 7):  # whatever the moment, the next slot is after it
        after = datetime(2026, 11, 1, 3, 0, tzinfo=UTC) + timedelta(minutes=minute)
        due = next_due(early, after)
        assert due is not None
        assert due > after, (after, due)


def test_staggering_is_a_stable_offset_per_environment_within_the_window() -> None:
    offsets = {stagger_offset(f"acme/env-{i}", "nightly") for i in range(50)}
    assert all(timedelta(0) <= o < STAGGER_WINDOW for o in offsets)
    assert len(offsets) > 40  # spread, not all at one second
    assert stagger_offset("acme/env-1", "nightly") == stagger_offset("acme/env-1", "nightly")
    daily = EffectiveSchedule(name="nightly", type="destroy", cron="0 20 * * *", staggered=True)
    after = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    due = next_due(daily, after, key="acme/env-1")
    assert due == datetime(2026, 12, 1, 20, 0, tzinfo=UTC) + stagger_offset("acme/env-1", "nightly")
    assert due is not None
    assert next_due(daily, due, key="acme/env-1") == due + timedelta(days=1)  # fired: the next day's


def test_the_environments_schedules_replace_the_templates_by_name_and_add_their_own() -> None:
    text = with_schedules(
        (
            "    - {name: team, value: a-team}\n",
            "    - {name: team, value: a-team}\n  schedules:\n"
            "    - {name: nightly, type: destroy, cadence: {cronExpression: '0 22 * * *', staggered: true}}\n"
            "    - {name: morning, type: deploy, cadence: {cronExpression: '0 7 * * 1-5'}}\n",
        )
    )
    template, environment = documents(text)
    problems = Problems()
    schedules = {s.name: s for s in effective_schedules(template, environment, problems)}
    assert not problems.errors
    assert set(schedules) == {"nightly", "ttl", "morning"}
    assert (schedules["nightly"].cron, schedules["nightly"].timezone, schedules["nightly"].staggered) == (
        "0 22 * * *",
        "UTC",
        True,
    )
    ttl = schedules["ttl"]
    assert (ttl.kind, ttl.ttl_seconds, ttl.allow_opt_out, ttl.max_opt_out_seconds, ttl.max_opt_outs) == (
        "ttl",
        8 * 3600,
        True,
        4 * 3600,
        2,
    )
    assert schedules["morning"].type == "deploy"
    assert not schedules["morning"].allow_opt_out


def test_optouts_within_the_limits_are_kept_in_seconds() -> None:
    template, environment = documents(with_optouts("{name: ttl, duration: 2h}", "{name: ttl, duration: 4h}"))
    problems = Problems()
    [ttl] = [s for s in effective_schedules(template, environment, problems) if s.name == "ttl"]
    assert not problems.errors
    assert ttl.optouts == (7200, 14400)
    assert run(with_optouts("{name: ttl, duration: 2h}")).errors == ()


@pytest.mark.parametrize(
    ("lines", "path", "message"),
    [
        (["{name: nightly, duration: 1h}"], "spec.scheduleOptouts[0]", "does not allow opt-outs"),
        (["{name: ttl, duration: 5h}"], "spec.scheduleOptouts[0]", "5h is beyond schedule 'ttl'"),
        (
            ["{name: ttl, duration: 1h}", "{name: ttl, duration: 1h}", "{name: ttl, duration: 1h}"],
            "spec.scheduleOptouts[2]",
            "optOutOptions.maxAllowedTimes is 2",
        ),
        (["{name: tll, duration: 1h}"], "spec.scheduleOptouts[0].name", "no schedule 'tll' to opt out of"),
        (["{name: ttl, duration: soon}"], "spec.scheduleOptouts[0].duration", "'soon' is not a duration"),
    ],
)
def test_an_optout_outside_the_templates_limits_is_an_error_at_its_path(
    lines: list[str], path: str, message: str
) -> None:
    result = run(with_optouts(*lines))
    problem = only(result.errors, path)
    assert message in problem.message, str(problem)


def test_an_unknown_schedule_in_an_optout_gets_the_closest_name() -> None:
    problem = only(run(with_optouts("{name: tll, duration: 1h}")).errors, "spec.scheduleOptouts[0].name")
    assert problem.hint == 'did you mean "ttl"?'


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (("'0 20 * * 1-5'", "'61 20 * * 1-5'"), "spec.schedules[0].cadence.cronExpression", "bad minute"),
        (("Europe/Berlin", "Europe/Atlantis"), "spec.schedules[0].cadence.cronTimezone", "unknown time zone"),
        (("timeToLive: 8h", "timeToLive: 8 hours"), "spec.schedules[1].cadence.timeToLive", "is not a duration"),
        (
            ("maxAllowedDuration: 4h", "maxAllowedDuration: long"),
            "spec.schedules[1].optOutOptions.maxAllowedDuration",
            "'long' is not a duration",
        ),
        (
            ("name: ttl\n      type: destroy", "name: ttl\n      type: deploy"),
            "spec.schedules[1].cadence.timeToLive",
            "must be of type destroy",
        ),
        (
            ("cronTimezone: Europe/Berlin}", "cronTimezone: Europe/Berlin, extendOnDeploy: true}"),
            "spec.schedules[0].cadence.extendOnDeploy",
            "applies to a timeToLive only",
        ),
    ],
)
def test_a_bad_schedule_is_an_error_at_its_path(edit: tuple[str, str], path: str, message: str) -> None:
    problem = only(run(with_schedules(edit)).errors, path)
    assert message in problem.message, str(problem)


def test_a_workflows_schedule_without_tasks_is_an_error_at_its_workflows() -> None:
    text = with_schedules(("{name: nightly, type: destroy,", "{name: nightly, type: workflows,"))
    problem = only(run(text).errors, "spec.schedules[0].workflows")
    assert problem.message == "schedule 'nightly' of type workflows has no tasks"


def test_an_environment_cannot_loosen_a_template_schedules_limits() -> None:
    text = with_schedules(
        (
            "    - {name: team, value: a-team}\n",
            "    - {name: team, value: a-team}\n  schedules:\n"
            "    - {name: ttl, type: destroy, cadence: {timeToLive: 1d}, optOutOptions: {maxAllowedTimes: 9}}\n",
        )
    )
    problem = only(run(text).errors, "spec.schedules[0].optOutOptions")
    assert "the template's to set" in problem.message


def test_a_refusal_names_the_limit() -> None:
    ttl = EffectiveSchedule(name="ttl", type="destroy", ttl_seconds=3600, allow_opt_out=True, max_opt_out_seconds=7200)
    assert refusal(ttl, 7200, already=5) == ""
    assert "maxAllowedDuration 2h" in refusal(ttl, 7201, already=0)
    closed = msgspec.structs.replace(ttl, allow_opt_out=False)
    assert "allowOptOut" in refusal(closed, 60, already=0)


def test_the_definition_changes_with_the_cadence_and_not_with_optouts() -> None:
    base = EffectiveSchedule(name="n", type="deploy", cron="0 7 * * *")
    assert base.definition == msgspec.structs.replace(base, optouts=(60,)).definition
    assert base.definition != msgspec.structs.replace(base, cron="0 8 * * *").definition


def test_a_schedules_variables_travel_as_text_to_its_runs() -> None:
    text = with_schedules(
        (
            "{name: nightly, type: destroy, cadence:",
            "{name: nightly, type: destroy, variables: [{name: team, value: night-crew}, {name: size, value: 3}], "
            "cadence:",
        )
    )
    template, environment = documents(text)
    [nightly] = [s for s in effective_schedules(template, environment, Problems()) if s.name == "nightly"]
    assert nightly.variables == {"team": "night-crew", "size": "3"}


def test_a_detect_drift_schedule_runs_on_a_cron_like_the_others() -> None:
    text = with_schedules(("{name: nightly, type: destroy,", "{name: nightly, type: detectDrift,"))
    assert run(text).errors == ()
    template, environment = documents(text)
    problems = Problems()
    [nightly] = [s for s in effective_schedules(template, environment, problems) if s.name == "nightly"]
    assert not problems.errors
    assert (nightly.type, nightly.kind, nightly.cron, nightly.timezone) == (
        "detectDrift",
        "cron",
        "0 20 * * 1-5",
        "Europe/Berlin",
    )


def test_a_detect_drift_schedule_with_a_time_to_live_is_an_error_at_its_path_and_left_out() -> None:
    text = with_schedules(("name: ttl\n      type: destroy", "name: ttl\n      type: detectDrift"))
    problem = only(run(text).errors, "spec.schedules[1].cadence.timeToLive")
    assert problem.message == "schedule 'ttl' is a detectDrift schedule: it runs on a cronExpression, not a timeToLive"
    assert "cronExpression: '0 6 * * *'" in (problem.hint or "")
    template, environment = documents(text)
    problems = Problems()
    assert {s.name for s in effective_schedules(template, environment, problems)} == {"nightly"}
    assert [p.path for p in problems.errors] == ["spec.schedules[1].cadence.timeToLive"]


def test_a_detect_drift_schedule_takes_no_variables() -> None:
    text = with_schedules(
        (
            "{name: nightly, type: destroy, cadence:",
            "{name: nightly, type: detectDrift, variables: [{name: team, value: x}], cadence:",
        )
    )
    problem = only(run(text).errors, "spec.schedules[0].variables")
    assert problem.message == "schedule 'nightly' is a detectDrift schedule: it takes no variables"
    assert "last deploy" in (problem.hint or "")
    template, environment = documents(text)
    assert {s.name for s in effective_schedules(template, environment, Problems())} == {"ttl"}


def test_an_unknown_schedule_type_names_the_allowed_ones() -> None:
    problem = only(
        run(with_schedules(("{name: nightly, type: destroy,", "{name: nightly, type: detect-drift,"))).errors,
        "spec.schedules[0].type",
    )
    assert "detectDrift" in f"{problem.message} {problem.hint}", str(problem)
