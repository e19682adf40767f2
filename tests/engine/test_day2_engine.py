"""The engine with day-2 actions and force-destroys: what an action reads and leaves, the walk
past failures, and runs of one environment one at a time."""

from __future__ import annotations

from engine_support import Driver, act, workflow

from trellis_core.workflow import ContainerSpec, LastDeploy, RunPurpose

READS_HOST = ContainerSpec(command=("echo", "$(resource.db.output.host.value)$", "$(resource.rotate.output.n.value)$"))
DEPLOYED = {"db": {"host": {"value": "db.internal"}}}


def test_an_action_reads_the_last_deploys_outputs_and_its_own_and_leaves_the_deploy_as_it_was() -> None:
    d = Driver()
    d.st.env_outputs[("acme", "dev")] = DEPLOYED  # what the scheduler saw the last deploy produce
    action = workflow(
        act("action/rotate/task/first", resource="rotate"),
        act("action/rotate/task/second", "action/rotate/task/first", resource="rotate", spec=READS_HOST),
        purpose=RunPurpose(day2_action="rotate"),
    )
    d.compile(action)
    d.succeed("action/rotate/task/first", outputs={"n": "7"})
    assert d.last("action/rotate/task/second").activity.spec == ContainerSpec(command=("echo", "db.internal", "7"))
    d.succeed("action/rotate/task/second")
    done = d.completion()
    assert done is not None
    assert done.status == "succeeded"
    assert done.outputs == {"rotate": {"n": {"value": "7"}}}  # the action's own outputs only
    assert d.st.env_outputs[("acme", "dev")] == DEPLOYED  # the deploy's outputs stay


def test_after_a_restart_an_action_reads_the_outputs_the_compiler_recorded() -> None:
    d = Driver()  # a scheduler that saw no run of the environment since it started
    reads = ContainerSpec(command=("echo", "$(resource.db.output.host.value)$"))
    last = LastDeploy(run_id="r0", outputs=DEPLOYED)
    d.compile(
        workflow(act("action/check/task/t", spec=reads), purpose=RunPurpose(day2_action="check"), last_deploy=last)
    )
    assert d.last("action/check/task/t").activity.spec == ContainerSpec(command=("echo", "db.internal"))


def test_an_ordinary_deploy_does_not_read_the_last_deploys_outputs() -> None:
    d = Driver()
    d.st.env_outputs[("acme", "dev")] = DEPLOYED
    d.compile(workflow(act("resource/app/apply", resource="app", spec=READS_HOST)))
    assert d.status("resource/app/apply") == "failed"  # resource 'db' has no outputs in this run
    assert "cannot render" in d.run().acts[0].reason


def test_a_force_destroy_goes_on_past_a_failure_and_the_run_still_fails() -> None:
    d = Driver()
    forced = workflow(
        act("resource/app/destroy"),
        act("resource/db/destroy", "resource/app/destroy"),
        act("resource/vpc/destroy", "resource/db/destroy"),
        action="destroy",
        purpose=RunPurpose(force=True),
        continue_past_failure=True,
    )
    d.compile(forced)
    d.fail("resource/app/destroy")
    assert d.status("resource/db/destroy") == "dispatched"  # not skipped: the walk goes on
    d.succeed("resource/db/destroy")
    d.succeed("resource/vpc/destroy")
    done = d.completion()
    assert done is not None
    assert done.status == "failed"
    assert done.message.startswith("resource/app/destroy")
    assert d.dispatched_ids() == ["resource/app/destroy", "resource/db/destroy", "resource/vpc/destroy"]


def test_without_the_flag_a_failure_skips_what_depends_on_it() -> None:
    d = Driver()
    d.compile(workflow(act("a"), act("b", "a"), action="destroy"))
    d.fail("a")
    assert d.status("b") == "skipped"


def test_an_action_waits_for_the_environments_running_deploy_and_a_deploy_for_the_action() -> None:
    d = Driver()
    d.compile(workflow(act("resource/app/apply", resource="app")), run_id="deploy-1")
    d.tick(1.0)
    d.compile(workflow(act("action/x/task/t", resource="x"), purpose=RunPurpose(day2_action="x")), run_id="act-1")
    d.tick(1.0)
    d.compile(workflow(act("resource/app/apply", resource="app")), run_id="deploy-2")
    assert d.dispatched_ids("act-1") == []  # the environment is held by deploy-1
    d.succeed("resource/app/apply", run_id="deploy-1")
    assert d.dispatched_ids("act-1") == ["action/x/task/t"]
    assert d.dispatched_ids("deploy-2") == []  # now held by the action
    d.succeed("action/x/task/t", run_id="act-1")
    assert d.dispatched_ids("deploy-2") == ["resource/app/apply"]
