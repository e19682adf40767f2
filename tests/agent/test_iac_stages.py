"""Checkout and OpenTofu/Terraform stages, run through the process backend."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from agent_support import ChunkCollector, RecordingSink, environ_path, work_item

from trellis_agent.executors.base import Outcome, Workspace, execute
from trellis_agent.executors.iac import PLAN_FILE, IacExecutor, iac_arguments
from trellis_agent.executors.process import ProcessExecutor
from trellis_agent.sink import LogSink
from trellis_core.events import WorkItem
from trellis_core.workflow import CheckoutSpec, IacSpec

FAKE_TOFU = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls.log"
case "$1" in
  output) echo '{"vpc_id": {"value": "vpc-123", "type": "string", "sensitive": false}}' ;;
  plan) echo "Plan: 1 to add" ;;
esac
"""


@pytest.fixture
def iac() -> IacExecutor:
    return IacExecutor(ProcessExecutor(kill_grace_seconds=0.5, environ=environ_path()))


def _git(repo: Path, *args: str) -> str:
    identity = ("-c", "user.name=Trellis Test", "-c", "user.email=test@trellis.invalid")
    done = subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    """A repository whose first commit the tests check out; a later commit changes the module."""
    root = tmp_path / "modules.git"
    (root / "network" / "vpc").mkdir(parents=True)
    (root / "network" / "vpc" / "main.tf").write_text("# first\n")
    (root / "README.md").write_text("modules\n")
    _git(root, "init", "--quiet", "--initial-branch=main")
    _git(root, "add", ".")
    _git(root, "commit", "--quiet", "-m", "first")
    first = _git(root, "rev-parse", "HEAD")
    (root / "network" / "vpc" / "main.tf").write_text("# second\n")
    _git(root, "commit", "--quiet", "-am", "second")
    return root, first


def _stage(spec: CheckoutSpec | IacSpec, run_id: str | None = None) -> WorkItem:
    """A stage of resource `vpc`: all stages of one run share its workspace."""
    name = spec.stage if isinstance(spec, IacSpec) else "checkout"
    suffix = "-destroy" if isinstance(spec, IacSpec) and spec.destroy else ""
    return work_item(spec, workspace="resource/vpc", run_id=run_id, activity_id=f"resource/vpc/{name}{suffix}")


async def test_checkout_clones_the_revision_and_keeps_only_the_path(
    iac: IacExecutor, repo: tuple[Path, str], tmp_path: Path
) -> None:
    url, first = repo
    work = _stage(CheckoutSpec(url=str(url), revision=first, path="network/vpc"))
    workspace = Workspace.for_work(tmp_path / "data", work)
    sink = RecordingSink()
    outcome = await execute(iac, work, workspace, sink)
    assert outcome == Outcome.succeeded({"commit": first}, exit_code=0), sink.text()
    assert (workspace.root / "main.tf").read_text() == "# first\n"
    assert not (workspace.root / "README.md").exists()
    assert not (workspace.root / ".trellis" / "src").exists()


async def test_checkout_of_a_missing_path_fails_and_says_which(
    iac: IacExecutor, repo: tuple[Path, str], tmp_path: Path
) -> None:
    url, _ = repo
    work = _stage(CheckoutSpec(url=str(url), path="network/nope"))
    sink = RecordingSink()
    outcome = await execute(iac, work, Workspace.for_work(tmp_path / "data", work), sink)
    assert outcome.status == "failed"
    assert "'network/nope' is not a directory" in sink.text("stderr")


async def test_git_credentials_never_reach_the_log(iac: IacExecutor, tmp_path: Path) -> None:
    spec = CheckoutSpec(url="http://127.0.0.1:1/private/repo.git", username="ci", password="t0ps3cret-pw")
    work = _stage(spec)
    collector = ChunkCollector()
    async with LogSink.for_work(work, collector) as sink:
        outcome = await execute(iac, work, Workspace.for_work(tmp_path / "data", work), sink)
    assert outcome.status == "failed"
    assert "t0ps3cret-pw" not in collector.text()


async def test_iac_stages_run_the_binary_in_the_shared_workspace_and_parse_outputs(
    iac: IacExecutor, tmp_path: Path
) -> None:
    fake = tmp_path / "bin" / "tofu"
    fake.parent.mkdir()
    fake.write_text(FAKE_TOFU)
    fake.chmod(0o755)
    run_id = None
    outputs: dict[str, object] = {}
    for stage in ("init", "plan", "apply", "output"):
        spec = IacSpec(tool="opentofu", stage=stage, binary=str(fake), backend_configs=("path=s.tfstate",))  # type: ignore[arg-type]
        work = _stage(spec, run_id=run_id)
        run_id = work.run_id
        outcome = await execute(iac, work, Workspace.for_work(tmp_path / "data", work), RecordingSink())
        assert outcome.ok, outcome.reason
        outputs = outcome.outputs
    calls = (fake.parent / "calls.log").read_text().splitlines()
    assert calls[0] == "init -input=false -no-color -backend-config=path=s.tfstate"
    assert calls[1] == f"plan -input=false -no-color -out={PLAN_FILE}"
    assert calls[2] == f"apply -input=false -no-color {PLAN_FILE}"
    assert calls[3] == "output -json -no-color"
    assert outputs == {"vpc_id": {"value": "vpc-123", "type": "string", "sensitive": False}}


def test_a_destroy_plan_is_planned_with_destroy_and_applied_from_its_file() -> None:
    plan = IacSpec(tool="terraform", stage="plan", destroy=True, refresh=False, lock=False, var_files=("a.tfvars",))
    assert iac_arguments(plan, "terraform") == (
        "terraform", "plan", "-input=false", "-no-color", "-lock=false", "-destroy", "-refresh=false",
        "-var-file=a.tfvars", f"-out={PLAN_FILE}",
    )  # fmt: skip
    destroy = IacSpec(tool="terraform", stage="destroy")
    assert iac_arguments(destroy, "terraform") == (
        "terraform",
        "apply",
        "-input=false",
        "-no-color",
        PLAN_FILE,
    )


NO_TERRAFORM = (
    "terraform is not on PATH: this test always skips in CI (.ci/run does not install terraform, "
    "it is not in Debian); install terraform to run it"
)


@pytest.mark.skipif(shutil.which("terraform") is None, reason=NO_TERRAFORM)
async def test_a_real_terraform_deploys_and_destroys_a_local_resource(iac: IacExecutor, tmp_path: Path) -> None:
    module = (
        'resource "terraform_data" "vpc" {\n  input = "vpc-42"\n}\n'
        'output "vpc_id" {\n  value = terraform_data.vpc.output\n}\n'
    )
    run_id = None
    for stage, destroy in (
        ("init", False),
        ("plan", False),
        ("apply", False),
        ("output", False),
        ("plan", True),
        ("destroy", True),
    ):
        work = _stage(IacSpec(tool="terraform", stage=stage, destroy=destroy), run_id=run_id)  # type: ignore[arg-type]
        run_id = work.run_id
        workspace = Workspace.for_work(tmp_path / "data", work)
        workspace.prepare()
        (workspace.root / "main.tf").write_text(module)
        sink = RecordingSink()
        outcome = await execute(iac, work, workspace, sink)
        assert outcome.ok, sink.text()
        if stage == "output":
            assert outcome.outputs["vpc_id"]["value"] == "vpc-42"
        if destroy and stage == "destroy":
            assert "1 destroyed" in sink.text("stdout")
