"""The compiled workflow: the activity DAG the compiler produces and the scheduler walks.

This is the one definition of the compiled form of docs/templates.md ("Compilation"; `trellis
template compile --format json`); it travels inside the `run.compiled` event and, one activity at a time and
rendered, inside the work items agents receive.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ActivityKind = Literal["container", "http", "function", "approval"]
Action = Literal["deploy", "destroy"]
RunWhen = Literal["success", "failure", "always"]
FailurePolicy = Literal["fail", "continue"]
DEFAULT_POOL = "default"  # the agent pool of an activity whose template names none
IacTool = Literal["opentofu", "terraform"]
IacStage = Literal["init", "plan", "apply", "output", "destroy"]


class _Spec(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", rename="camel", omit_defaults=True):
    """Base of every executor spec; the `type` tag names the variant."""


class ContainerSpec(_Spec, frozen=True, tag="container"):
    """Run a command to completion (pod, container or local process). Exit code decides success."""

    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    files: dict[str, str] = {}  # path (relative to the workspace, or absolute) -> base64 content
    working_dir: str = ""
    cpu_limit_milli: int | None = None
    memory_limit_mb: int | None = None
    success_condition: str = ""  # expression over exit_code; default: exit code 0


class CheckoutSpec(_Spec, frozen=True, tag="checkout"):
    """Clone repository@revision into the resource's workspace, keeping only `path` as the root."""

    url: str
    revision: str = ""
    path: str = ""
    username: str = ""
    password: str = ""  # sensitive
    ssh_key: str = ""  # sensitive
    env: dict[str, str] = {}


class StateBackend(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """`backendType: system`: the resource's state lives in Trellis (docs/state-backend.md). The
    compiler service fills both fields: the backend's address and the run's sealed credential."""

    address: str = ""
    credential: str = ""  # a sealed token: TF_HTTP_PASSWORD once the agent opens it


class IacSpec(_Spec, frozen=True, tag="iac"):
    """One OpenTofu/Terraform stage in the resource's workspace."""

    tool: IacTool
    stage: IacStage
    binary: str = ""  # default: `tofu` or `terraform`
    image: str = ""
    destroy: bool = False  # plan stage of a destroy run: `plan -destroy`
    backend_configs: tuple[str, ...] = ()
    var_files: tuple[str, ...] = ()
    refresh: bool = True
    lock: bool = True
    env: dict[str, str] = {}  # TF_VAR_*, TRELLIS_VAR_*, the contexts' envs
    state_backend: StateBackend | None = None  # `backendType: system`
    drift: bool = False  # plan stage of a drift check: `-detailed-exitcode`, reports what would change


class HttpSpec(_Spec, frozen=True, tag="http"):
    """One HTTP call. Success is an expression over `response` (default: 2xx)."""

    url: str
    method: str = "POST"
    headers: dict[str, str] = {}
    body: str = ""
    verify_tls: bool = True
    success_condition: str = ""


class FunctionSpec(_Spec, frozen=True, tag="function"):
    """A function served by a container image or at an endpoint, polled until it is done."""

    image: str = ""
    endpoint: str = ""
    repeat_seconds: float = 15.0
    until_seconds: float = 3600.0
    invocation_timeout_seconds: float = 300.0
    env: dict[str, str] = {}
    cpu_limit_milli: int | None = None
    memory_limit_mb: int | None = None


class ApprovalSpec(_Spec, frozen=True, tag="approval"):
    """Notify (an HTTP call carrying a signed callback URL), then wait for approve or reject."""

    notify: HttpSpec | None = None
    approvers: tuple[str, ...] = ()


ActivitySpec = ContainerSpec | CheckoutSpec | IacSpec | HttpSpec | FunctionSpec | ApprovalSpec


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """Retries after a failure: `max_attempts` counts the first try. Backoff is exponential with jitter."""

    max_attempts: int = 1
    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    multiplier: float = 2.0


class SkipConfig(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    condition: str = ""  # an expression; truthy skips the activity
    skip_on_destroy: bool = False


class TemplateRef(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    version: str = ""


class Activity(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One node of the DAG: what an agent runs, when it may run, and how failures are handled.

    `when`: `success` — ready when every dependency succeeded (or failed with `onFailure:
    continue`); `failure` — when every dependency is finished and at least one failed, timed
    out or was skipped for it (a tolerated `onFailure: continue` failure does not count;
    otherwise skipped); `always` — when every dependency is finished.
    `workspace`: activities sharing a workspace key run on the agent that ran the first of them.
    Strings may still hold late-bound `$( )$` expressions (upstream outputs): the scheduler
    renders them just before dispatch.
    """

    id: str
    kind: ActivityKind
    spec: ActivitySpec
    resource: str = ""
    stage: str = ""
    depends_on: tuple[str, ...] = ()
    when: RunWhen = "success"
    on_failure: FailurePolicy = "fail"
    agents: tuple[str, ...] = (DEFAULT_POOL,)
    workspace: str = ""
    timeout_seconds: float | None = None
    retry: RetryPolicy = RetryPolicy()
    execute_once: bool = False
    skip: SkipConfig | None = None
    inputs: dict[str, Any] = {}  # the resource's merged variables (TRELLIS_INPUTS)
    sensitive: tuple[str, ...] = ()  # names of inputs/env entries whose values are masked
    bundle: str = ""  # digest of the run's files beside the templates (the bundle object store)

    @property
    def pool(self) -> str:
        """The pool its work is dispatched to: its first agent, else the default pool."""
        return self.agents[0] if self.agents else DEFAULT_POOL


class LastDeploy(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """The environment's last successful deploy as the state store knew it when the run was
    compiled: `executeOnce` hooks already ran, and what a destroy renders outputs with."""

    run_id: str = ""
    outputs: dict[str, dict[str, Any]] = {}  # resource -> output -> {"value": ...}; a deploy's is left empty


class RunPurpose(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """What a run is for beyond its action; empty: an ordinary deploy or destroy.

    `day2_action`: a day-2 action of the template, run on the deployed environment (action
    `deploy`) without redeploying it. `force`: a destroy that skips every hook and goes on past
    failures. `drift`: a plan-only run (action `deploy`) that records whether the live
    infrastructure differs from the state and changes nothing. `scheduled_tasks`: the tasks of
    the `workflows` schedule it names, run on the deployed environment as a day-2 action's (action
    `deploy`). `expiring`: the template's `onExpiring` hooks, run when a time to live's expiry is
    announced (action `deploy`). At most one is set.
    """

    day2_action: str = ""
    force: bool = False
    drift: bool = False
    scheduled_tasks: str = ""
    expiring: bool = False

    @property
    def label(self) -> str:
        """As the state store keeps it (`runs.purpose`): "", "action:<name>", "force-destroy", "drift",
        "schedule:<name>", "expiring"."""
        if self.day2_action:
            return f"action:{self.day2_action}"
        if self.scheduled_tasks:
            return f"schedule:{self.scheduled_tasks}"
        if self.force:
            return "force-destroy"
        if self.expiring:
            return "expiring"
        return "drift" if self.drift else ""

    @property
    def ordinary(self) -> bool:
        """An ordinary deploy or destroy (a force-destroy counts: it ends the environment too)."""
        return not (self.day2_action or self.drift or self.scheduled_tasks or self.expiring)

    @property
    def on_deployed(self) -> str:
        """The action or schedule whose tasks run on the deployed environment, reading its last
        deploy's outputs ("" for any other run)."""
        return self.day2_action or self.scheduled_tasks

    @property
    def reads_deploy(self) -> bool:
        """Whether it renders with the last deploy's outputs as its own (`resource.<r>.output`):
        tasks on the deployed environment and the expiry notice's hooks."""
        return bool(self.on_deployed or self.expiring)

    def problem(self, action: Action) -> str:
        """Why this purpose cannot go with `action` ("" when it can)."""
        chosen = [n for n, on in (("a day-2 action", bool(self.day2_action)), ("force", self.force),
                                  ("drift", self.drift), ("scheduled tasks", bool(self.scheduled_tasks)),
                                  ("an expiry notice", self.expiring)) if on]
        if len(chosen) > 1:
            return f"a run is one of {' and '.join(chosen)}, not several"
        if self.force and action != "destroy":
            return "force applies to a destroy only"
        if not self.ordinary and action != "deploy":
            return f"{chosen[0]} runs with action deploy, not {action}"
        return ""


NO_PURPOSE = RunPurpose()


class StaticOutputs(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """A static resource of the run (docs/static-resources.md): nothing runs for it, its outputs
    are given. `kind: resource`: a StaticResource's variables; `kind: environment`: the outputs
    of `environment` (another environment of the tenant) when the run was compiled."""

    kind: Literal["resource", "environment"]
    environment: str = ""
    outputs: dict[str, dict[str, Any]] = {}  # output -> {"value": ...} (and "sensitive": true)


class Workflow(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """The compiled DAG of one run, activities in a stable topological order."""

    environment: str
    template: TemplateRef
    action: Action
    activities: tuple[Activity, ...]
    warnings: tuple[str, ...] = ()
    # Names for rendering late-bound expressions at dispatch: `environment` (name, id, variables),
    # `run` (id, action, requested_by), `tenant`, `context`. An activity's own `inputs` become
    # `variables`; upstream outputs become `resource`.
    scope: dict[str, Any] = {}
    # The run request's own values (`--var`), kept so that a destroy can reuse the last deploy's.
    requested_variables: dict[str, str] = {}
    # Set by the compiler service from the state store (None: no deploy recorded, or not asked);
    # the scheduler prefers what it saw itself since it started (see trellis_engine.transitions).
    last_deploy: LastDeploy | None = None
    purpose: RunPurpose = NO_PURPOSE  # as the run request gave it
    # A failed activity neither blocks nor skips its dependents: the walk goes on, the run still
    # fails (a force-destroy; see trellis_engine.transitions).
    continue_past_failure: bool = False
    # Static resources by name: their outputs, which late-bound expressions read as any other's.
    static: dict[str, StaticOutputs] = {}
    # A drift check's: every resource -> output ("*": read whole) -> the resources whose deploy reads it
    output_readers: dict[str, dict[str, tuple[str, ...]]] = {}

    def by_id(self) -> dict[str, Activity]:
        return {a.id: a for a in self.activities}
