"""What `trellis run` shows, folded from events alone: log tails under failures, timeouts that
stay timed out, compile warnings, and a live view bounded to a screenful whatever the run's size."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime

from rich.console import Console

from trellis_cli.run_progress import (
    REFRESH_SECONDS,
    RunView,
    Screen,
    as_json,
    failures_text,
    progress_text,
    shown_rows,
    summary_line,
)
from trellis_core.events import (
    ActivityCancelled,
    ActivityCompleted,
    ActivityDispatched,
    ActivityFailed,
    ActivityLogChunk,
    ActivityStarted,
    ActivityTimedOut,
    Problem,
    RunCompiled,
    RunRejected,
)
from trellis_core.workflow import Activity, ContainerSpec, TemplateRef, Workflow

IDS = {"tenant": "acme", "run_id": "r1"}


def _view(*ids: str, warnings: tuple[str, ...] = ()) -> RunView:
    acts = tuple(Activity(id=i, kind="container", spec=ContainerSpec()) for i in ids)
    wf = Workflow(
        environment="dev", template=TemplateRef(name="t"), action="deploy", activities=acts, warnings=warnings
    )
    view = RunView(run_id="r1", environment="dev", action="deploy")
    view.apply(RunCompiled(workflow=wf, **IDS))
    return view


def _log(activity_id: str, attempt: int, sequence: int, data: str) -> ActivityLogChunk:
    return ActivityLogChunk(activity_id=activity_id, attempt=attempt, sequence=sequence, data=data, **IDS)


def test_a_failed_activity_shows_the_last_twenty_lines_of_its_newest_attempt() -> None:
    view = _view("a")
    assert view.add_log(_log("a", 1, 0, "first attempt\n")) == ["first attempt"]
    view.apply(ActivityDispatched(activity_id="a", attempt=2, pool="default", **IDS))
    lines = "".join(f"line {n}\n" for n in range(30))
    assert view.add_log(_log("a", 2, 0, lines[:15])) == [f"line {n}" for n in range(2)]
    view.add_log(_log("a", 2, 1, lines[15:] + "no newline at the end"))
    view.add_log(_log("a", 1, 1, "late news of attempt 1\n"))
    view.apply(ActivityFailed(activity_id="a", attempt=2, reason="exited with code 3", **IDS))
    expected = [f"line {n}" for n in range(11, 30)] + ["no newline at the end"]
    assert view.by_id["a"].log_lines() == expected
    shown = failures_text(view).plain
    assert shown.startswith("a failed: exited with code 3\n")
    assert "  | line 29\n" in shown
    assert "line 10\n" not in shown
    assert "first attempt" not in shown
    assert json.loads(as_json(view))["activities"][0]["log_tail"] == expected


def test_a_cancel_confirmed_after_a_timeout_leaves_the_activity_timed_out() -> None:
    view = _view("slow", "capped")
    for activity_id in ("slow", "capped"):
        view.apply(ActivityDispatched(activity_id=activity_id, attempt=1, pool="default", **IDS))
        view.apply(ActivityStarted(activity_id=activity_id, attempt=1, agent="x", **IDS))
    view.apply(ActivityTimedOut(activity_id="slow", attempt=1, timeout_seconds=1, **IDS))
    view.apply(ActivityCancelled(activity_id="slow", attempt=1, reason="timed out after 1s", **IDS))
    # The agent's own deadline: a failure that says it timed out.
    view.apply(ActivityFailed(activity_id="capped", attempt=1, reason="timed out after 2s", timed_out=True, **IDS))
    assert [(a.status, a.message) for a in view.activities] == [
        ("timed_out", "timed out after 1s"),
        ("timed_out", "timed out after 2s"),
    ]
    assert view.counts["timed_out"] == 2


def test_compile_warnings_are_kept_for_the_screen_and_the_json_document() -> None:
    view = _view("a", warnings=("--var colour: no variable of that name",))
    assert view.warnings == ["--var colour: no variable of that name"]
    assert json.loads(as_json(view))["warnings"] == view.warnings
    rejected = RunView(run_id="r1", environment="dev", action="deploy")
    rejected.apply(
        RunRejected(
            errors=(Problem(message="bad"),), warnings=(Problem(message="odd", file="a.yaml", line=3, column=1),), **IDS
        )
    )
    assert (rejected.errors, rejected.warnings) == (["bad"], ["a.yaml:3:1: odd"])


def test_the_live_view_draws_at_most_a_screenful_running_activities_first() -> None:
    ids = [f"resource/r{n}/task/make" for n in range(1000)]
    view = _view(*ids)
    for n, activity_id in enumerate(ids[:600]):
        view.apply(ActivityDispatched(activity_id=activity_id, attempt=1, pool="default", **IDS))
        if n < 550:
            view.apply(ActivityStarted(activity_id=activity_id, attempt=1, agent="x", **IDS))
        if n < 540:
            view.apply(ActivityCompleted(activity_id=activity_id, attempt=1, **IDS))
    view.apply(ActivityFailed(activity_id=ids[3], attempt=1, reason="boom", **IDS))  # late: ignored
    rows = shown_rows(view, 30)
    assert len(rows) == 30
    assert [a.status for a in rows[:10]] == ["running"] * 10
    assert {a.status for a in rows[10:]} == {"dispatched"}
    assert summary_line(view) == "540/1000 done: 540 succeeded; 50 dispatched, 400 pending, 10 running"
    drawn = progress_text(view, datetime.now(UTC), 30).plain.splitlines()
    assert len(drawn) == 2 + 30 + 1
    assert drawn[-1].strip() == "… 970 more not shown"


def test_on_a_terminal_the_screen_redraws_at_most_once_a_refresh_interval_whatever_the_event_rate() -> None:
    ids = [f"resource/r{n}/task/make" for n in range(1000)]
    view = RunView(run_id="r1", environment="dev", action="deploy")
    console = Console(file=io.StringIO(), force_terminal=True, width=120, height=30)
    screen = Screen(console, view, follow=False, as_document=False)
    draws = 0
    started = time.monotonic()
    with screen:
        assert screen._display is not None
        real_update = screen._display.update

        def counting_update(*args: object, **kwargs: object) -> None:
            nonlocal draws
            draws += 1
            real_update(*args, **kwargs)

        screen._display.update = counting_update
        wf = Workflow(
            environment="dev",
            template=TemplateRef(name="t"),
            action="deploy",
            activities=tuple(Activity(id=i, kind="container", spec=ContainerSpec()) for i in ids),
        )
        screen.apply(RunCompiled(workflow=wf, **IDS))
        for activity_id in ids:
            for event in (
                ActivityDispatched(activity_id=activity_id, attempt=1, pool="default", **IDS),
                ActivityStarted(activity_id=activity_id, attempt=1, agent="x", **IDS),
                ActivityCompleted(activity_id=activity_id, attempt=1, **IDS),
            ):
                screen.apply(event)
                screen.refresh()
        elapsed = time.monotonic() - started
    assert 1 <= draws <= 2 + elapsed / REFRESH_SECONDS  # and one last draw on leaving
    last = console.file.getvalue().split("deploy dev — run r1")[-1]
    assert "1000/1000 done: 1000 succeeded" in last
    assert last.count("task/make") <= 30


# ---- nothing secret is shown --------------------------------------------------------------------

SECRET = "hunter2-the-db-password"


def _token(secret: str = SECRET) -> str:
    from trellis_core import sealed

    return sealed.MasterKeyring(sealed.new_master_key()).for_tenant("acme").seal(secret)


def test_tokens_and_sensitive_outputs_show_masked_in_the_view_the_summary_and_the_json_document() -> None:
    from trellis_cli.run_progress import print_summary
    from trellis_core.events import RunCompleted

    token = _token()
    dsn = f"postgres://app:{token}@db"
    outputs = {"password": {"value": SECRET, "sensitive": True}, "url": {"value": dsn, "sensitive": False},
               "raw": token, "nested": {"inner": {"value": SECRET, "sensitive": True}}}  # fmt: skip
    view = _view("a", "b", warnings=(f"variable dsn is {dsn}",))
    for a in ("a", "b"):
        view.apply(ActivityDispatched(activity_id=a, attempt=1, pool="default", **IDS))
        view.apply(ActivityStarted(activity_id=a, attempt=1, agent="ag", **IDS))
    lines = view.add_log(_log("a", 1, 0, f"connect {dsn[:25]}")) + view.add_log(_log("a", 1, 1, f"{dsn[25:]} ok\n"))
    assert lines == ["connect postgres://app:********@db ok"]
    view.add_log(_log("b", 1, 0, f"ends inside {token[:30]}"))  # the rest of the token has not come
    assert view.by_id["b"].log_lines() == ["ends inside ********"]
    view.apply(ActivityCompleted(activity_id="a", attempt=1, outputs=outputs, **IDS))
    view.apply(ActivityFailed(activity_id="b", attempt=1, reason=f"could not reach {dsn}", **IDS))
    view.apply(RunCompleted(status="failed", message=f"b failed on {dsn}", outputs={"db": outputs}, **IDS))

    document = as_json(view).decode()
    out = io.StringIO()
    console = Console(file=out, width=300, force_terminal=False)
    print_summary(console, view)
    screen = io.StringIO()
    Console(file=screen, width=300).print(progress_text(view, datetime.now(UTC)))
    for what, text in (("--json", document), ("summary", out.getvalue()), ("view", screen.getvalue())):
        assert SECRET not in text, (what, text)
        assert "[[trellis-sealed:" not in text, (what, text)
        assert "trellis-sealed" not in text, (what, text)
    parsed = json.loads(document)
    shown = {
        "password": {"value": "********", "sensitive": True},
        "url": {"value": "postgres://app:********@db", "sensitive": False},
        "raw": "********",
        "nested": {"inner": {"value": "********", "sensitive": True}},
    }
    assert parsed["outputs"] == {"db": shown}
    assert next(a for a in parsed["activities"] if a["id"] == "a")["outputs"] == shown
    assert parsed["message"] == "b failed on postgres://app:********@db"
    assert parsed["warnings"] == ["variable dsn is postgres://app:********@db"]
    assert "could not reach postgres://app:********@db" in out.getvalue()
    assert "postgres://app:********@db" in out.getvalue()  # the outputs table


def test_follow_prints_log_lines_with_tokens_masked() -> None:
    token = _token()
    view = _view("a")
    out = io.StringIO()
    screen = Screen(Console(file=out, width=300), view, follow=True, as_document=False)
    screen.log(_log("a", 1, 0, f"token {token[:10]}"))
    screen.log(_log("a", 1, 1, f"{token[10:]} done\n"))
    assert "a | token ******** done" in out.getvalue()
    assert "trellis-sealed" not in out.getvalue()
