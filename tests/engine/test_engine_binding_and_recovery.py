"""Late binding of upstream outputs, skip rules, and restoring a run from a snapshot."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec
from engine_support import Driver, act, workflow

from trellis_core.events import RunEvent
from trellis_core.workflow import ContainerSpec, HttpSpec, SkipConfig
from trellis_engine.backoff import backoff_seconds, jitter_fraction
from trellis_engine.commands import PublishEvent
from trellis_engine.decide import decide, fold
from trellis_engine.graph import restore, snapshot
from trellis_engine.recovery import adopt
from trellis_engine.state import RunSnapshot, SchedulerState
from trellis_templates.expressions import LATE


class PathRenderer:
    """Stands in for trellis_templates' renderer: `$(a.b.c)$` looks the path up in the scope."""

    def render(self, value: Any, scope: dict[str, Any]) -> Any:
        inner = value.strip()[2:-2].strip()
        node: Any = scope
        for part in inner.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(f"{inner!r} is undefined")
            node = node[part]
        return node

    def budget(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


fake_render = PathRenderer()


def test_an_engine_given_no_renderer_fails_a_late_bound_activity_saying_so() -> None:
    d = Driver(render=None)
    d.compile(workflow(act("a", spec=ContainerSpec(command=("echo", "$(resource.x.output.y.value)$")))))
    assert d.dispatches == []
    [a] = d.run().acts
    assert a.status == "failed"
    assert "late-bound expressions need a renderer, and the engine was given none" in a.reason


def test_upstream_outputs_are_rendered_into_the_activity_just_before_dispatch() -> None:
    d = Driver(render=fake_render)
    url = "$(resource.vpc.output.endpoint.value)$"
    d.compile(
        workflow(
            act("vpc/output", resource="vpc"),
            act(
                "app/apply",
                "vpc/output",
                spec=HttpSpec(url=url),
                inputs={"port": "$(variables.p)$", "p": 8080},
            ),
        )
    )
    d.succeed("vpc/output", outputs={"endpoint": {"value": "https://vpc.example", "type": "string"}})
    dispatched = d.last("app/apply").activity
    assert isinstance(dispatched.spec, HttpSpec)
    assert dispatched.spec.url == "https://vpc.example"
    assert dispatched.inputs["port"] == 8080
    done = d.run_to_end()
    assert done.outputs["vpc"]["endpoint"]["value"] == "https://vpc.example"


def test_a_rendering_error_fails_that_activity_with_the_message() -> None:
    d = Driver(render=fake_render)
    d.compile(workflow(act("a", spec=ContainerSpec(command=("echo", "$(resource.nope.output.x.value)$")))))
    assert d.dispatches == []
    run = d.run()
    assert run.acts[0].status == "failed"
    assert "spec.command[1]" in run.acts[0].reason
    assert "undefined" in run.acts[0].reason
    assert (done := d.completion()) is not None
    assert done.status == "failed"


def test_a_late_expression_over_its_budget_fails_its_activity_and_nothing_else() -> None:
    d = Driver(render=LATE)
    tower = "$( (((resource.vpc.output.base.value ** 64) ** 64) ** 64) ** 64 )$"
    d.compile(
        workflow(
            act("vpc/output", resource="vpc"),
            act("app/apply", "vpc/output", spec=HttpSpec(url=tower)),
            act("db/apply", "vpc/output", spec=HttpSpec(url="$(resource.vpc.output.base.value * 2)$")),
        )
    )
    d.compile(workflow(act("other/apply", spec=HttpSpec(url="$(1 + 1)$"))), run_id="r2", tenant="globex")
    d.succeed("vpc/output", outputs={"base": {"value": 10, "type": "number"}})
    app = d.run().acts[1]
    assert app.status == "failed"
    assert "cannot render: spec.url" in app.reason
    assert "integer size budget exceeded" in app.reason
    db_spec = d.last("db/apply").activity.spec
    assert isinstance(db_spec, HttpSpec)
    assert db_spec.url == "20"
    assert d.run_to_end("r2").status == "succeeded"
    done = d.run_to_end()
    assert done.status == "failed"
    assert "app/apply" in done.message


def test_a_late_expression_cannot_change_the_recorded_outputs() -> None:
    d = Driver(render=LATE)
    evil = "$( resource.vpc.output.update({'endpoint': {'value': 'evil'}}) )$"
    d.compile(
        workflow(
            act("vpc/output", resource="vpc"),
            act("app/apply", "vpc/output", spec=HttpSpec(url=evil)),
            act("db/apply", "app/apply", when="always", spec=HttpSpec(url="$(resource.vpc.output.endpoint.value)$")),
        )
    )
    d.succeed("vpc/output", outputs={"endpoint": {"value": "https://vpc.example"}})
    assert d.run().acts[1].status == "failed"
    assert "not allowed" in d.run().acts[1].reason
    assert d.run().outputs["vpc"] == {"endpoint": {"value": "https://vpc.example"}}
    db_spec = d.last("db/apply").activity.spec
    assert isinstance(db_spec, HttpSpec)
    assert db_spec.url == "https://vpc.example"


def test_all_strings_of_one_activity_share_one_render_budget() -> None:
    d = Driver(render=LATE)
    each = "$(resource.vpc.output.big.value|tojson|length)$"
    d.compile(
        workflow(
            act("vpc/output", resource="vpc"),
            act("one/apply", "vpc/output", spec=ContainerSpec(command=("echo", each))),
            act("many/apply", "vpc/output", spec=ContainerSpec(command=("echo",) + (each,) * 8)),
        )
    )
    d.succeed("vpc/output", outputs={"big": {"value": "x" * 600_000}})
    one = d.last("one/apply").activity.spec
    assert isinstance(one, ContainerSpec)
    assert one.command == ("echo", "600002")
    many = d.run().acts[2]
    assert many.status == "failed"
    assert "work budget exceeded" in many.reason


def test_a_truthy_skip_condition_skips_the_activity_but_not_its_dependents() -> None:
    d = Driver(render=fake_render)
    d.compile(
        workflow(
            act("notify", skip=SkipConfig(condition="$(variables.quiet)$"), inputs={"quiet": True}),
            act("apply", "notify"),
        )
    )
    assert d.dispatched_ids() == ["apply"]
    assert d.run().acts[0].status == "skipped"
    assert d.run_to_end().status == "succeeded"


def test_skip_on_destroy_skips_only_in_destroy_runs() -> None:
    hook = act("hook", skip=SkipConfig(skip_on_destroy=True))
    deploy, destroy = Driver(), Driver()
    deploy.compile(workflow(hook, action="deploy"))
    destroy.compile(workflow(hook, action="destroy"))
    assert deploy.dispatched_ids() == ["hook"]
    assert destroy.dispatched_ids() == []


def test_execute_once_runs_only_until_the_environment_deployed_successfully() -> None:
    d = Driver()
    d.compile(workflow(act("seed", execute_once=True)), run_id="r1")
    d.run_to_end("r1")
    d.compile(workflow(act("seed", execute_once=True)), run_id="r2")
    assert d.dispatched_ids("r2") == []
    assert (done := d.completion("r2")) is not None
    assert done.status == "succeeded"


def test_backoff_grows_exponentially_is_capped_and_its_jitter_is_deterministic() -> None:
    from trellis_core.workflow import RetryPolicy

    policy = RetryPolicy(initial_backoff_seconds=1.0, multiplier=2.0, max_backoff_seconds=10.0)
    delays = [backoff_seconds(policy, n, f"k{n}") for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        step = min(2.0 ** (n - 1), 10.0)
        assert step / 2 <= delay < step
    assert backoff_seconds(policy, 3, "same") == backoff_seconds(policy, 3, "same")
    assert jitter_fraction("a") != jitter_fraction("b")


def test_a_run_restored_from_a_snapshot_and_replayed_dispatches_nothing_twice() -> None:
    d = Driver()
    wf = workflow(act("a"), act("b", "a"), act("c", "a"), act("d", "b", "c"))
    d.compile(wf)
    events: list[RunEvent] = []
    snap_bytes = msgspec.json.encode(snapshot(d.run()))  # taken right after the run started
    events.extend(c.event for c in d.commands if isinstance(c, PublishEvent))
    a = d.last("a")
    for e in (d.started(a), d.completed(a)):
        events.append(e)
        d.feed(e)
    events.extend(c.event for c in d.commands if isinstance(c, PublishEvent) and c.event not in events)
    before = {(x.activity.id, x.attempt) for x in d.dispatches}

    # a fresh scheduler: the snapshot, then every event after it, in stream order
    st = SchedulerState(config=d.st.config)
    run = restore(msgspec.json.decode(snap_bytes, type=RunSnapshot), wf)
    adopt(st, run, d.now)
    for e in events:
        fold(st, e)
    _, cmds = decide(st, d.now, render=d.render)
    redispatched = {(c.activity.id, c.attempt) for c in cmds if hasattr(c, "activity")}
    assert redispatched <= before  # the same attempts again at most: JetStream drops them as duplicates
    assert {s.status for s in st.runs["r1"].acts} == {s.status for s in d.run().acts}


def test_a_destroy_run_renders_with_the_outputs_of_the_last_successful_deploy() -> None:
    d = Driver(render=fake_render)
    d.compile(workflow(act("db/task", resource="db"), act("app/task", "db/task", resource="app")), run_id="r1")
    d.succeed("db/task", "r1", outputs={"dsn": "postgres://db"})
    d.run_to_end("r1")
    uses_dsn = HttpSpec(url="$(resource.db.output.dsn.value)$")
    destroy = workflow(act("app/task", resource="app", spec=uses_dsn), act("db/task", "app/task"), action="destroy")
    d.compile(destroy, run_id="r2")
    spec = d.last("app/task", "r2").activity.spec
    assert isinstance(spec, HttpSpec)
    assert spec.url == "postgres://db"
