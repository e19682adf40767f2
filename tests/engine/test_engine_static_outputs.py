"""Static resources' outputs (Workflow.static) are the run's from its start: late-bound strings
read them like any upstream output, and a deploy's recorded outputs include them."""

from __future__ import annotations

from engine_support import Driver, act, workflow

from trellis_core.workflow import LastDeploy, StaticOutputs

READS = '$(resource."shared-db".output.host.value)$:$(resource.network.output.port.value)$'
STATIC = {
    "shared-db": StaticOutputs(kind="resource", outputs={"host": {"value": "db.internal"}}),
    "network": StaticOutputs(kind="environment", environment="network", outputs={"port": {"value": 5433}}),
}


def test_a_dispatched_activity_reads_static_outputs() -> None:
    d = Driver()
    d.compile(workflow(act("resource/app/task/show", resource="app", inputs={"db": READS}), static=STATIC))
    assert d.last("resource/app/task/show").activity.inputs == {"db": "db.internal:5433"}
    done = d.run_to_end()
    assert done.outputs["shared-db"] == {"host": {"value": "db.internal"}}
    assert done.outputs["network"] == {"port": {"value": 5433}}


def test_a_destroy_prefers_the_static_outputs_it_was_compiled_with_over_the_last_deploys() -> None:
    d = Driver()
    last = LastDeploy(run_id="r0", outputs={"network": {"port": {"value": 1}}, "shared-db": {"host": {"value": "x"}}})
    wf = workflow(
        act("resource/app/destroy", resource="app", inputs={"db": READS}),
        action="destroy",
        static={"network": STATIC["network"], "shared-db": StaticOutputs(kind="environment", environment="gone")},
        last_deploy=last,
    )
    d.compile(wf)
    # network: fresh from the store; shared-db's environment was gone: the last deploy's outputs
    assert d.last("resource/app/destroy").activity.inputs == {"db": "x:5433"}
