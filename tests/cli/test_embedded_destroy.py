"""A destroy works from the environment's last successful deploy: its variables unless the
destroy gives its own, its outputs; and without a recorded deploy it says so."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import msgspec
from embedded_stack_support import DEMO, cli_env, trellis

from trellis_compiler.service import no_deploy_note, with_deploy_variables
from trellis_core.events import RunRequested
from trellis_store.api import DeployRecord

SIZED_TEMPLATE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: box}
spec:
  provider: custom
  variables:
    - {name: size, valueType: text, value: small}
  providerOptions:
    custom:
      tasks:
        - name: record
          type: script
          options:
            script:
              script: printf '%s' "$TRELLIS_VAR_size" > "OUT/$TRELLIS_ACTION.txt"
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: sized}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: box}]
  variables:
    - {name: size, valueType: text, value: small}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: sized}
spec:
  template: {name: sized, version: v1}
"""


def _run(stack_dir: Path, templates: Path, environment: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        trellis("run", str(templates), "--environment", environment, "--json", *args),
        capture_output=True, text=True, timeout=120, env=cli_env(stack_dir / "data"), cwd=stack_dir,
    )
    assert done.stdout, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_destroy_reuses_the_deploys_variables_unless_given_its_own(stack_dir: Path) -> None:
    templates = stack_dir / "sized"
    templates.mkdir()
    (templates / "templates.yaml").write_text(SIZED_TEMPLATE.replace("OUT", str(stack_dir)))
    assert _run(stack_dir, templates, "sized", "--var", "size=large")["status"] == "succeeded"
    assert (stack_dir / "deploy.txt").read_text() == "large"
    assert _run(stack_dir, templates, "sized", "--action", "destroy")["status"] == "succeeded"
    assert (stack_dir / "destroy.txt").read_text() == "large"
    assert _run(stack_dir, templates, "sized", "--var", "size=large")["status"] == "succeeded"
    destroyed = _run(stack_dir, templates, "sized", "--action", "destroy", "--var", "size=huge")
    assert destroyed["status"] == "succeeded"
    assert (stack_dir / "destroy.txt").read_text() == "huge"


def test_a_destroy_with_no_recorded_deploy_says_so(stack_dir: Path) -> None:
    result = _run(stack_dir, DEMO, "demo", "--action", "destroy")
    assert result["status"] == "failed"
    messages = [str(result.get("message", ""))]
    messages += [str(a.get("message", "")) for a in result["activities"]]  # type: ignore[attr-defined]
    assert any(
        "undefined name" in m and "no deploy of environment 'demo' is recorded" in m for m in messages
    ), messages


def test_the_destroy_variables_go_over_the_deploys() -> None:
    destroy = RunRequested(tenant="t", run_id="r", environment="e", action="destroy", variables={"a": "mine"})
    record = DeployRecord(deployed=True, variables={"a": "deployed", "b": "kept"})
    assert with_deploy_variables(destroy, record).variables == {"a": "mine", "b": "kept"}
    assert with_deploy_variables(destroy, None) is destroy
    deploy = msgspec.structs.replace(destroy, action="deploy")
    assert with_deploy_variables(deploy, record) is deploy
    assert no_deploy_note(destroy, record) == ()
    assert no_deploy_note(deploy, None) == ()
    assert "no deploy of environment 'e' is recorded for tenant 't'" in no_deploy_note(destroy, None)[0]
    destroyed = DeployRecord(deployed=False)  # destroyed since: nothing to reuse
    assert with_deploy_variables(destroy, destroyed) is destroy
    assert "no deploy of environment 'e'" in no_deploy_note(destroy, destroyed)[0]


def test_what_the_store_took_but_did_not_write_is_handed_back_when_the_stack_stops(stack_dir: Path) -> None:
    """An event the projection fetched but did not write before the stack stopped must reach the
    next consumer at once, not after the 30 s ack wait: the next run's consistent read (the last
    deploy) waits for it."""
    import asyncio

    import nats

    from trellis_core.embedded import EmbeddedNats

    assert _run(stack_dir, DEMO, "demo")["status"] == "succeeded"

    async def unprojected_reach_a_new_consumer() -> tuple[int, int]:
        server = EmbeddedNats(stack_dir / "data" / "nats")
        nc = await nats.connect(await asyncio.to_thread(server.start))
        try:
            js = nc.jetstream()
            last = (await js.stream_info("TRELLIS_EVENTS")).state.last_seq
            info = await js.consumer_info("TRELLIS_EVENTS", "trellis_store_events")
            reached = info.ack_floor.stream_seq if info.ack_floor else 0
            sub = await js.pull_subscribe_bind("trellis_store_events", stream="TRELLIS_EVENTS")
            while reached < last:
                try:
                    msgs = await sub.fetch(100, timeout=5)  # far less than the ack wait
                except nats.errors.TimeoutError:
                    break
                reached = max([reached, *(m.metadata.sequence.stream for m in msgs)])
            return reached, last
        finally:
            await nc.close()
            await asyncio.to_thread(server.stop)

    reached, last = asyncio.run(unprojected_reach_a_new_consumer())
    assert reached == last
