"""What the engine knows of an environment's last deploy (its own memory first, else the record the
compiled workflow carries), and the callback URL each approval attempt is rendered with."""

from __future__ import annotations

import json

from engine_support import Driver, act, workflow

from trellis_core.workflow import Activity, ApprovalSpec, HttpSpec, LastDeploy, RetryPolicy


class RecordingMinter:
    """Stands in for the scheduler's minter: a distinct URL per call, and the calls it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, int, float]] = []

    def __call__(self, tenant: str, run_id: str, activity: Activity, attempt: int, now: float) -> str:
        self.calls.append((tenant, run_id, activity.id, attempt, now))
        return f"https://gw.example/v1/callbacks/approvals/{run_id}.{activity.id}.{attempt}.{len(self.calls)}"


def approval(id: str = "ask", body: str = '{"url": "$(approval.callback_url)$"}', **kw: object) -> Activity:
    spec = ApprovalSpec(notify=HttpSpec(url="https://chat.example/hook", body=body), approvers=("lead@example.com",))
    return act(id, kind="approval", spec=spec, **kw)  # type: ignore[arg-type]


def notified_url(d: Driver, activity_id: str = "ask") -> str:
    spec = d.last(activity_id).activity.spec
    assert isinstance(spec, ApprovalSpec)
    assert spec.notify is not None
    return str(json.loads(spec.notify.body)["url"])


def test_each_approval_attempt_is_rendered_with_a_callback_url_minted_for_that_attempt() -> None:
    minter = RecordingMinter()
    d = Driver(mint=minter)
    d.compile(workflow(approval(retry=RetryPolicy(max_attempts=2, initial_backoff_seconds=1.0))))
    first = notified_url(d)
    assert minter.calls == [("acme", "r1", "ask", 1, d.now)]
    assert first.endswith("r1.ask.1.1")

    d.fail("ask", retryable=True)  # the notification failed: the retry is a new attempt
    d.tick(5.0)
    assert d.last("ask").attempt == 2
    second = notified_url(d)
    assert [c[3] for c in minter.calls] == [1, 2]
    assert second != first
    assert second.endswith("r1.ask.2.2")


def test_a_callback_url_is_minted_only_for_an_approval_that_reads_it() -> None:
    minter = RecordingMinter()
    d = Driver(mint=minter)
    reads_url = act("note", spec=HttpSpec(url="https://h", body="$(approval.callback_url)$"))
    silent = approval("quiet", body='{"text": "approve $(resource.app.output.url.value)$"}', inputs={})
    d.compile(workflow(reads_url, silent))
    d.succeed("note")
    assert minter.calls == []  # not an approval: the expression stays as written
    spec = d.last("note").activity.spec
    assert isinstance(spec, HttpSpec)
    assert spec.body == "$(approval.callback_url)$"


def test_without_a_minter_the_callback_expression_is_left_as_written() -> None:
    d = Driver()
    d.compile(workflow(approval()))
    assert notified_url(d) == "$(approval.callback_url)$"


def test_execute_once_follows_the_compiled_last_deploy_when_the_scheduler_saw_none() -> None:
    d = Driver()  # a scheduler that just started: it remembers no environment
    d.compile(workflow(act("seed", execute_once=True), last_deploy=LastDeploy(run_id="before")), run_id="r1")
    assert d.dispatched_ids("r1") == []
    assert d.status("seed", "r1") == "skipped"
    d.compile(workflow(act("seed", execute_once=True), env="fresh"), run_id="r2")
    assert d.dispatched_ids("r2") == ["seed"]  # no deploy recorded: the hook runs


def test_what_the_scheduler_saw_itself_wins_over_a_record_compiled_before_it() -> None:
    d = Driver()
    d.compile(workflow(act("down"), action="destroy", last_deploy=LastDeploy(run_id="before")), run_id="r1")
    assert d.run_to_end("r1").status == "succeeded"
    # compiled before that destroy finished: its record says deployed, but the environment is gone
    d.compile(workflow(act("seed", execute_once=True), last_deploy=LastDeploy(run_id="before")), run_id="r2")
    assert d.dispatched_ids("r2") == ["seed"]


def test_a_destroy_renders_with_the_compiled_last_deploys_outputs_when_the_scheduler_saw_none() -> None:
    d = Driver()
    uses_dsn = HttpSpec(url="$(resource.db.output.dsn.value)$")
    record = LastDeploy(run_id="before", outputs={"db": {"dsn": {"value": "postgres://db"}}})
    d.compile(workflow(act("app/task", resource="app", spec=uses_dsn), action="destroy", last_deploy=record))
    spec = d.last("app/task").activity.spec
    assert isinstance(spec, HttpSpec)
    assert spec.url == "postgres://db"


def test_a_destroy_renders_with_the_deploy_the_scheduler_saw_over_an_older_record() -> None:
    d = Driver()
    d.compile(workflow(act("db/task", resource="db")), run_id="r1")
    d.succeed("db/task", "r1", outputs={"dsn": "postgres://new"})
    d.run_to_end("r1")
    uses_dsn = HttpSpec(url="$(resource.db.output.dsn.value)$")
    stale = LastDeploy(run_id="older", outputs={"db": {"dsn": {"value": "postgres://old"}}})
    d.compile(workflow(act("app/task", resource="app", spec=uses_dsn), action="destroy", last_deploy=stale), "r2")
    spec = d.last("app/task", "r2").activity.spec
    assert isinstance(spec, HttpSpec)
    assert spec.url == "postgres://new"


def test_a_destroy_that_cannot_render_without_a_recorded_deploy_says_so() -> None:
    d = Driver()
    uses_dsn = HttpSpec(url="$(resource.db.output.dsn.value)$")
    d.compile(workflow(act("app/task", resource="app", spec=uses_dsn), action="destroy"))
    done = d.completion()
    assert done is not None
    assert done.status == "failed"
    assert "no deploy of environment 'dev' is recorded" in done.message
