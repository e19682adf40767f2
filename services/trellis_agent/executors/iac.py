"""Built-in IaC stages: git checkout and OpenTofu/Terraform init/plan/apply/output/destroy.

Each stage becomes a container command run by the container backend in use (a local process,
a Docker container or a pod) in the resource's workspace, so the plan file written by `plan`
is there for `apply`. `output -json` goes to `$TRELLIS_OUTPUTS`, so each output arrives as
`{"value", "type", "sensitive"}`, the shape expressions read (`…output.vpc_id.value`).
"""

from __future__ import annotations

import base64

import msgspec

from trellis_agent.executors.base import Executor, Outcome, Sink, Workspace
from trellis_agent.executors.drift_plan import DRIFT_PLAN_SCRIPT, drift_report
from trellis_core.events import WorkItem
from trellis_core.state_credentials import USERNAME
from trellis_core.workflow import CheckoutSpec, ContainerSpec, IacSpec

PLAN_FILE = "trellis.tfplan"
# `backendType: system`: an override file makes the configuration's backend Trellis' http one
# (replacing any backend block of its own); the address goes on init's command line, the
# credential only in the environment (TF_HTTP_PASSWORD), never in an argument or a file.
BACKEND_OVERRIDE_FILE = "trellis_backend_override.tf"
BACKEND_OVERRIDE = 'terraform {\n  backend "http" {}\n}\n'

_BINARIES = {"opentofu": "tofu", "terraform": "terraform"}

# Clone url@revision into .trellis/src, keep only `path`, record the commit as an output.
CHECKOUT_SCRIPT = r"""
set -eu
umask 077
git_() { "$TRELLIS_GIT_BINARY" "$@"; }
cleanup() { rm -rf .trellis/src .trellis/ssh_key .trellis/known_hosts; }
trap cleanup EXIT
cleanup
if [ -n "${TRELLIS_GIT_SSH_KEY:-}" ]; then
  printf '%s\n' "$TRELLIS_GIT_SSH_KEY" > .trellis/ssh_key
  GIT_SSH_COMMAND="ssh -i $PWD/.trellis/ssh_key -o StrictHostKeyChecking=accept-new"
  export GIT_SSH_COMMAND="$GIT_SSH_COMMAND -o UserKnownHostsFile=$PWD/.trellis/known_hosts"
fi
export GIT_TERMINAL_PROMPT=0
echo "cloning $TRELLIS_GIT_URL ${TRELLIS_GIT_REVISION:+at $TRELLIS_GIT_REVISION}"
helper='!f() { echo "username=${TRELLIS_GIT_USERNAME:-git}"; echo "password=${TRELLIS_GIT_PASSWORD:-}"; }; f'
git_ -c credential.helper="$helper" clone --quiet -- "$TRELLIS_GIT_URL" .trellis/src
if [ -n "${TRELLIS_GIT_REVISION:-}" ]; then
  git_ -C .trellis/src checkout --quiet "$TRELLIS_GIT_REVISION" --
fi
commit=$(git_ -C .trellis/src rev-parse HEAD)
sub=".trellis/src/${TRELLIS_GIT_PATH:-.}"
if [ ! -d "$sub" ]; then
  echo "path '$TRELLIS_GIT_PATH' is not a directory of $TRELLIS_GIT_URL@${TRELLIS_GIT_REVISION:-HEAD}" >&2
  exit 2
fi
cp -R "$sub"/. .
echo "checked out $commit${TRELLIS_GIT_PATH:+ ($TRELLIS_GIT_PATH)}"
printf '{"commit": "%s"}' "$commit" > "$TRELLIS_OUTPUTS"
"""

OUTPUT_SCRIPT = '"$0" output -json -no-color > "$TRELLIS_OUTPUTS"'


def checkout_container(spec: CheckoutSpec, *, git_binary: str, image: str) -> ContainerSpec:
    env = {
        **spec.env,
        "TRELLIS_GIT_URL": spec.url,
        "TRELLIS_GIT_REVISION": spec.revision,
        "TRELLIS_GIT_PATH": spec.path.strip("/"),
        "TRELLIS_GIT_BINARY": git_binary,
    }
    if spec.username:
        env["TRELLIS_GIT_USERNAME"] = spec.username
    if spec.password:
        env["TRELLIS_GIT_PASSWORD"] = spec.password
    if spec.ssh_key:
        env["TRELLIS_GIT_SSH_KEY"] = spec.ssh_key
    return ContainerSpec(image=image, command=("sh", "-c", CHECKOUT_SCRIPT), env=env)


def iac_arguments(spec: IacSpec, binary: str) -> tuple[str, ...]:
    """The command line of one stage (docs/templates.md, "Compilation": init, plan -out, apply plan, output -json)."""
    common: tuple[str, ...] = ("-input=false", "-no-color")
    lock = () if spec.lock else ("-lock=false",)
    if spec.stage == "init":
        backend = spec.backend_configs
        if spec.state_backend is not None:  # -reconfigure: a reused workspace knows an older credential
            address = spec.state_backend.address
            backend = (f"address={address}", f"lock_address={address}", f"unlock_address={address}")
            common = (*common, "-reconfigure")
        return (binary, "init", *common, *(f"-backend-config={c}" for c in backend))
    if spec.stage == "plan":
        plan = (
            binary,
            "plan",
            *common,
            *lock,
            *(("-destroy",) if spec.destroy else ()),
            *(() if spec.refresh else ("-refresh=false",)),
            *(f"-var-file={f}" for f in spec.var_files),
            f"-out={PLAN_FILE}",
        )
        if spec.drift:  # exit code 2: changes; then `show -json` of the plan file to $TRELLIS_OUTPUTS
            return ("sh", "-c", DRIFT_PLAN_SCRIPT, binary, PLAN_FILE, *plan[1:], "-detailed-exitcode")
        return plan
    if spec.stage in ("apply", "destroy"):  # destroy applies the `plan -destroy` file
        return (binary, "apply", *common, *lock, PLAN_FILE)
    return ("sh", "-c", OUTPUT_SCRIPT, binary)


def iac_container(spec: IacSpec, *, image: str) -> ContainerSpec:
    binary = spec.binary or _BINARIES[spec.tool]
    env = {"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", **spec.env}
    files: dict[str, str] = {}
    if spec.state_backend is not None:
        env |= {"TF_HTTP_USERNAME": USERNAME, "TF_HTTP_PASSWORD": spec.state_backend.credential}
        files[BACKEND_OVERRIDE_FILE] = base64.b64encode(BACKEND_OVERRIDE.encode()).decode()
    return ContainerSpec(image=spec.image or image, command=iac_arguments(spec, binary), env=env, files=files)


class IacExecutor:
    """Turns checkout and IaC specs into container commands for `backend`."""

    def __init__(self, backend: Executor, *, git_binary: str = "git", image: str = "", git_image: str = "") -> None:
        self._backend = backend
        self._git_binary = git_binary
        self._image = image
        self._git_image = git_image or image

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        spec = work.activity.spec
        sensitive = work.activity.sensitive
        if isinstance(spec, CheckoutSpec):
            container = checkout_container(spec, git_binary=self._git_binary, image=self._git_image)
            sensitive = (*sensitive, "TRELLIS_GIT_PASSWORD", "TRELLIS_GIT_SSH_KEY")
        elif isinstance(spec, IacSpec):
            container = iac_container(spec, image=self._image)
            if spec.state_backend is not None:
                sensitive = (*sensitive, "TF_HTTP_PASSWORD")
            await sink.system(f"{spec.tool} {spec.stage}")
        else:
            return Outcome.failed(f"not an IaC spec: {spec.__struct_config__.tag}", retryable=False)
        activity = msgspec.structs.replace(work.activity, spec=container, sensitive=sensitive)
        outcome = await self._backend.run(msgspec.structs.replace(work, activity=activity), workspace, sink)
        if isinstance(spec, IacSpec) and spec.drift and outcome.ok:
            return drift_report(outcome.outputs)
        return outcome
