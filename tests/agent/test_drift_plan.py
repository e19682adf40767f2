"""A drift check's plan, through the process backend with a shell script standing in for tofu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_support import RecordingSink, environ_path, work_item

from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.drift_plan import drift_report
from trellis_agent.executors.iac import PLAN_FILE, IacExecutor
from trellis_agent.executors.process import ProcessExecutor
from trellis_core.workflow import IacSpec

# Not OpenTofu: a script that answers `plan` with the exit code in $FAKE_PLAN_EXIT and `show -json`
# with the plan document in $FAKE_PLAN_JSON, recording its arguments.
STAND_IN_TOFU = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls.log"
case "$1" in
  plan) echo "planning"; exit "${FAKE_PLAN_EXIT:-0}" ;;
  show) printf '%s' "$FAKE_PLAN_JSON" ;;
esac
"""

DRIFTED_PLAN = {
    "format_version": "1.2",
    "resource_drift": [{"address": "aws_security_group.web", "change": {"actions": ["update"]}}],
    "resource_changes": [
        {"address": "aws_security_group.web", "change": {"actions": ["update"]}},
        {"address": "aws_vpc.main", "change": {"actions": ["no-op"]}},
        {"address": "data.aws_ami.ubuntu", "change": {"actions": ["read"]}},
        {"address": "aws_instance.web", "change": {"actions": ["delete", "create"]}},
    ],
    "output_changes": {"sg_id": {"actions": ["update"]}, "vpc_id": {"actions": ["no-op"]}},
}


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    fake = tmp_path / "bin" / "tofu"
    fake.parent.mkdir()
    fake.write_text(STAND_IN_TOFU)
    fake.chmod(0o755)
    return fake


async def _drift_plan(stand_in: Path, tmp_path: Path, exit_code: int, plan: dict[str, object]) -> tuple[object, str]:
    spec = IacSpec(tool="opentofu", stage="plan", binary=str(stand_in), drift=True,
                   env={"FAKE_PLAN_EXIT": str(exit_code), "FAKE_PLAN_JSON": json.dumps(plan)})
    iac = IacExecutor(ProcessExecutor(kill_grace_seconds=0.5, environ=environ_path()))
    work = work_item(spec, workspace="resource/vpc", activity_id="resource/vpc/plan")
    sink = RecordingSink()
    outcome = await execute(iac, work, Workspace.for_work(tmp_path / "data", work), sink)
    return outcome, sink.text()


async def test_a_plan_with_changes_reports_the_resources_and_outputs_that_differ(
    stand_in: Path, tmp_path: Path
) -> None:
    outcome, log = await _drift_plan(stand_in, tmp_path, 2, DRIFTED_PLAN)
    assert outcome.ok, log  # type: ignore[attr-defined]
    assert outcome.outputs == {  # type: ignore[attr-defined]
        "driftChanges": "yes",
        "driftResources": ["aws_security_group.web", "aws_instance.web"],
        "driftOutputs": ["sg_id"],
        "driftSummary": "2 resource(s) differ: aws_security_group.web, aws_instance.web; "
        "outputs that would change: sg_id",
    }
    calls = (stand_in.parent / "calls.log").read_text().splitlines()
    assert calls == [f"plan -input=false -no-color -out={PLAN_FILE} -detailed-exitcode",
                     f"show -json -no-color {PLAN_FILE}"]


async def test_a_plan_without_changes_reports_in_sync(stand_in: Path, tmp_path: Path) -> None:
    plan = {"resource_changes": [{"address": "aws_vpc.main", "change": {"actions": ["no-op"]}}]}
    outcome, log = await _drift_plan(stand_in, tmp_path, 0, plan)
    assert outcome.ok, log  # type: ignore[attr-defined]
    assert outcome.outputs["driftChanges"] == "no"  # type: ignore[attr-defined]
    assert outcome.outputs["driftResources"] == []  # type: ignore[attr-defined]


async def test_a_plan_that_errors_fails_the_check(stand_in: Path, tmp_path: Path) -> None:
    outcome, _ = await _drift_plan(stand_in, tmp_path, 1, {})
    assert outcome.status == "failed"  # type: ignore[attr-defined]
    assert outcome.exit_code == 1  # type: ignore[attr-defined]
    assert "show" not in (stand_in.parent / "calls.log").read_text()


def test_what_the_script_wrote_must_hold_an_exit_code_and_a_plan() -> None:
    refused = drift_report({"detailedExitcode": 2})
    assert refused.status == "failed"
    assert "show -json" in refused.reason
    assert drift_report({"detailedExitcode": 2, "plan": {}}).outputs["driftSummary"] == "the plan has changes"
