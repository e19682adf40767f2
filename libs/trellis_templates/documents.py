"""The template documents of docs/templates.md as msgspec Structs: the one definition of every kind."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

API_VERSIONS = ("trellis.dev/v1", "eaas.envmgmt.io/v1")
RAFAY_API_VERSION = "eaas.envmgmt.io/v1"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
VARIABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"
DnsName = Annotated[
    str,
    Meta(
        pattern=DNS_LABEL,
        min_length=1,
        max_length=63,
        description="a DNS label: lowercase letters, digits and '-', at most 63",
    ),
]
VariableName = Annotated[
    str,
    Meta(
        pattern=VARIABLE_NAME,
        min_length=1,
        max_length=128,
        description="a variable name: letters, digits, '_' and '-'",
    ),
]
Limit = str | int | None  # "500" or 500


class _Doc(msgspec.Struct, kw_only=True, rename="camel", frozen=True, forbid_unknown_fields=True):
    """Base of every part of a document: camelCase fields, unknown fields rejected."""


class NameRef(_Doc, kw_only=True, frozen=True):
    name: DnsName


class ContextRef(_Doc, kw_only=True, frozen=True):
    """A ConfigContext by name, or one written inline as `data: {envs, files, variables}`."""

    name: str = ""
    data: ConfigContextSpec | None = None


class VersionedRef(_Doc, kw_only=True, frozen=True):
    """`{name, version}`; no version means the only or the highest one."""

    name: DnsName
    version: str = ""


class Metadata(_Doc, kw_only=True, frozen=True):
    name: DnsName
    project: str = ""
    description: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


# ---- variables ------------------------------------------------------------------------------

ValueType = Literal["text", "json", "hcl", "expression"]
OverrideType = Literal["allowed", "notallowed", "restricted"]


class Override(_Doc, kw_only=True, frozen=True):
    type: OverrideType = "allowed"
    restricted_values: list[Any] = []
    # Rafay: with `restricted`, the value is a list of restrictedValues (several chosen), not one.
    multi_select: bool = False
    # Rafay: an EnvironmentTemplate variable that sets resource R's variable V instead of the
    # variables of its own name: `resources.R.V` (one, or a list).
    selector: str = ""
    selectors: list[str] = []


class VariableOptions(_Doc, kw_only=True, frozen=True):
    description: str = ""
    required: bool = False
    sensitive: bool = False
    override: Override = Override()


class Variable(_Doc, kw_only=True, frozen=True):
    name: VariableName
    value_type: ValueType = "text"
    value: Any = None
    options: VariableOptions = VariableOptions()


class EnvVarOptions(_Doc, kw_only=True, frozen=True):
    sensitive: bool = False
    required: bool = False
    description: str = ""


class EnvVar(_Doc, kw_only=True, frozen=True):
    key: Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    value: str = ""
    options: EnvVarOptions = EnvVarOptions()


class ContextFile(_Doc, kw_only=True, frozen=True):
    name: str
    data: str = ""  # base64
    mount_path: str = ""
    options: EnvVarOptions = EnvVarOptions()


# ---- hooks ----------------------------------------------------------------------------------

HookType = Literal["approval", "notification", "http", "container", "script", "driver", "workflowHandler"]


class HttpOptions(_Doc, kw_only=True, frozen=True):
    endpoint: str | None = None
    method: str | None = None
    headers: dict[str, str] | None = None
    body: str | None = None
    success_condition: str | None = None
    verify_tls: bool | None = None


class ContainerOptions(_Doc, kw_only=True, frozen=True):
    """As a Driver's container; in a hook of type driver, each field set here replaces the driver's."""

    image: str | None = None
    commands: list[str] | None = None
    arguments: list[str] | None = None
    env_vars: dict[str, str] | None = None
    files: dict[str, str] | None = None
    working_dir_path: str | None = None
    cpu_limit_milli: Limit = None
    memory_limit_mb: Limit = None
    success_condition: str | None = None


class ScriptOptions(_Doc, kw_only=True, frozen=True):
    script: str
    image: str = ""
    env_vars: dict[str, str] = {}


class Webhook(_Doc, kw_only=True, frozen=True):
    endpoint: str
    method: str = "POST"
    headers: dict[str, str] = {}
    body: str = ""


class Email(_Doc, kw_only=True, frozen=True):
    sender: str = ""
    receivers: list[str] = []
    subject: str = ""
    body: str = ""


class NotificationOptions(_Doc, kw_only=True, frozen=True):
    type: Literal["webhook", "email"] = "webhook"
    webhook: Webhook | None = None
    email: Email | None = None


class ApprovalInternal(_Doc, kw_only=True, frozen=True):
    emails: list[str] = []


class ApprovalOptions(_Doc, kw_only=True, frozen=True):
    type: Literal["internal", "webhook"] = "internal"
    internal: ApprovalInternal | None = None
    webhook: Webhook | None = None


class HookOptions(_Doc, kw_only=True, frozen=True):
    http: HttpOptions | None = None
    container: ContainerOptions | None = None
    script: ScriptOptions | None = None
    notification: NotificationOptions | None = None
    approval: ApprovalOptions | None = None


class SkipConfig(_Doc, kw_only=True, frozen=True):
    condition: str = ""
    skip_on_destroy: bool = False


class DriverRef(_Doc, kw_only=True, frozen=True):
    """A Driver by name (and version), or one written inline as `data: {config: ...}`."""

    name: str = ""
    version: str = ""
    data: InlineDriver | None = None


class Hook(_Doc, kw_only=True, frozen=True):
    name: DnsName
    type: HookType
    description: str = ""
    on_failure: Literal["unspecified", "fail", "continue"] = "unspecified"
    timeout_seconds: Annotated[int, Meta(ge=0)] | None = None
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    execute_once: bool = False
    skip_config: SkipConfig | None = None
    agents: list[NameRef] = []
    options: HookOptions = HookOptions()
    driver: DriverRef | None = None
    workflow_handler: DriverRef | None = None  # Rafay's newer name for `driver`


class OutputSpec(_Doc, kw_only=True, frozen=True):
    """An output a task or driver writes: its key, and what it holds."""

    name: Annotated[str, Meta(min_length=1, max_length=256)]
    description: str = ""


# Output keys as names (`[url, port]`) or `{name, description}`; unset (None): not declared.
Outputs = list[Annotated[str, Meta(min_length=1, max_length=256)] | OutputSpec] | None


class Task(Hook, kw_only=True, frozen=True):
    """A custom resource's task: a hook plus `dependsOn` (other tasks of the same resource).

    `outputs`, when every task of the resource (or its driver) declares them, are the only
    keys `resource.R.output.K` may read: another key is a compile error.
    """

    depends_on: list[DnsName] = []
    outputs: Outputs = None


class StageHooks(_Doc, kw_only=True, frozen=True):
    before: list[Hook] = []
    after: list[Hook] = []


class DeployStages(_Doc, kw_only=True, frozen=True):
    init: StageHooks = StageHooks()
    plan: StageHooks = StageHooks()
    apply: StageHooks = StageHooks()
    output: StageHooks = StageHooks()


class DestroyStages(_Doc, kw_only=True, frozen=True):
    init: StageHooks = StageHooks()
    plan: StageHooks = StageHooks()
    destroy: StageHooks = StageHooks()


class ProviderStageHooks(_Doc, kw_only=True, frozen=True):
    deploy: DeployStages = DeployStages()
    destroy: DestroyStages = DestroyStages()


class ProviderHooks(_Doc, kw_only=True, frozen=True):
    open_tofu: ProviderStageHooks | None = None
    terraform: ProviderStageHooks | None = None


class EnvironmentHooks(_Doc, kw_only=True, frozen=True):
    on_init: list[Hook] = []
    on_success: list[Hook] = []
    on_failure: list[Hook] = []
    on_completion: list[Hook] = []


class EnvironmentTemplateHooks(EnvironmentHooks, kw_only=True, frozen=True):
    on_drift: list[Hook] = []  # Trellis: run by a drift check that found drift (docs/drift.md)
    on_expiring: list[Hook] = []  # Trellis: run when a time to live's expiry is announced (docs/schedules.md)


class ResourceHooks(EnvironmentHooks, kw_only=True, frozen=True):
    provider: ProviderHooks = ProviderHooks()


# ---- drivers --------------------------------------------------------------------------------


class FunctionOptions(_Doc, kw_only=True, frozen=True):
    image: str = ""
    endpoint: str = ""
    cpu_limit_milli: Limit = None
    memory_limit_mb: Limit = None
    env_vars: dict[str, str] = {}
    source: Any = None  # Rafay builds functions from source; Trellis does not
    language: str = ""


class PollingConfig(_Doc, kw_only=True, frozen=True):
    repeat: str = "15s"
    until: str = "1h"


class DriverConfig(_Doc, kw_only=True, frozen=True):
    type: Literal["container", "http", "function"]
    timeout_seconds: Annotated[int, Meta(ge=0)] | None = None
    max_retry_count: Annotated[int, Meta(ge=0, le=100)] = 0
    success_condition: str = ""
    polling_config: PollingConfig | None = None
    container: ContainerOptions | None = None
    http: HttpOptions | None = None
    function: FunctionOptions | None = None


class InlineDriver(_Doc, kw_only=True, frozen=True):
    config: DriverConfig
    inputs: list[ContextRef] = []
    outputs: Outputs = None


# ---- resource templates ---------------------------------------------------------------------


class IacOptions(_Doc, kw_only=True, frozen=True):
    version: str = ""
    refresh: bool = True
    lock: bool = True
    backend_type: Literal["custom", "system"] = "custom"
    use_system_state_store: bool = False  # Rafay's switch for `backendType: system`
    backend_configs: list[str] = []
    var_files: list[str] = []
    timeout_seconds: Annotated[int, Meta(ge=0)] | None = None


class CustomOptions(_Doc, kw_only=True, frozen=True):
    reverse_on_destroy: bool = False
    tasks: list[Task] = []
    drift_check: Task | None = None  # Trellis: what a drift check runs for this resource (docs/drift.md)


class ProviderOptions(_Doc, kw_only=True, frozen=True):
    open_tofu: IacOptions | None = None
    terraform: IacOptions | None = None
    custom: CustomOptions | None = None
    driver: DriverRef | None = None
    workflow_handler: DriverRef | None = None  # Rafay's newer name for `driver`


class RepositoryOptions(_Doc, kw_only=True, frozen=True):
    name: str = ""
    url: str = ""
    branch: str = ""
    directory_path: str = ""


Provider = Literal["opentofu", "terraform", "custom"]
VersionState = Literal["draft", "active", "disabled"]


class ResourceTemplateSpec(_Doc, kw_only=True, frozen=True):
    provider: Provider
    version: str = "v1"
    version_state: VersionState = "active"
    description: str = ""
    provider_options: ProviderOptions = ProviderOptions()
    repository_options: RepositoryOptions | None = None
    contexts: list[ContextRef] = []
    agents: list[NameRef] = []
    variables: list[Variable] = []
    hooks: ResourceHooks = ResourceHooks()
    actions: list[EnvironmentAction] = []  # day-2 actions on this resource (docs/day2-actions.md)


# ---- environment templates and environments -------------------------------------------------


class ResourceOptions(_Doc, kw_only=True, frozen=True):
    version: str = ""


ResourceKind = Literal["resourcetemplate", "resource", "environment"]


class EnvironmentResource(_Doc, kw_only=True, frozen=True):
    """A resource of an EnvironmentTemplate. `kind: resourcetemplate` (`type: dynamic`): a
    ResourceTemplate deployed by the run. `type: static` (static-resources.md): nothing runs, the
    outputs are given: `kind: resource` names a StaticResource (its variables are the outputs),
    `kind: environment` names another environment of the tenant (its outputs are read)."""

    name: DnsName
    kind: ResourceKind = "resourcetemplate"
    type: Literal["dynamic", "static"] = "dynamic"
    resource_options: ResourceOptions = ResourceOptions()
    template: VersionedRef | None = None  # Trellis: another template than the one named `name`
    depends_on: list[NameRef] = []
    variables: list[Variable] = []  # Trellis: per-resource bindings
    agents: list[NameRef] = []


class BoolValue(_Doc, kw_only=True, frozen=True):
    """Rafay's wrapped boolean: `{value: true}`."""

    value: bool = False


class TextValue(_Doc, kw_only=True, frozen=True):
    """Rafay's wrapped string: `{value: "2h"}`."""

    value: str = ""


class IntValue(_Doc, kw_only=True, frozen=True):
    """Rafay's wrapped integer: `{value: 3}`."""

    value: int = 0


class Cadence(_Doc, kw_only=True, frozen=True):
    """When a schedule runs (`cronExpression`), or how long the environment lives (`timeToLive`)."""

    cron_expression: str = ""
    cron_timezone: str = "UTC"
    time_to_live: str = ""
    staggered: bool | BoolValue = False  # each environment fires at its own offset within a window
    extend_on_deploy: bool = False  # Trellis's: a later successful deploy restarts the time to live


class OptOutOptions(_Doc, kw_only=True, frozen=True):
    """How far an Environment may postpone this schedule (`scheduleOptouts`, `trellis env extend`)."""

    allow_opt_out: bool | BoolValue = False
    max_allowed_duration: str | TextValue = ""  # one opt-out's longest postponement ("": no limit)
    max_allowed_times: int | IntValue = 0  # opt-outs in all (0: no limit)
    approval: bool | BoolValue = False  # opt-outs through the API need the admin role


class ActionWorkflows(_Doc, kw_only=True, frozen=True):
    """What an action of type `workflows` runs: tasks, as a custom resource's."""

    tasks: list[Task] = []


class Schedule(_Doc, kw_only=True, frozen=True):
    name: DnsName
    type: Literal["deploy", "destroy", "workflows", "detectDrift"]  # detectDrift: Trellis's (docs/drift.md)
    description: str = ""
    cadence: Cadence
    variables: list[Variable] = []
    opt_out_options: OptOutOptions | None = None
    workflows: ActionWorkflows | None = None  # type workflows: the tasks each slot runs (docs/schedules.md)


class ScheduleOptout(_Doc, kw_only=True, frozen=True):
    """An Environment's postponement of one schedule by `duration` (`8h`, `2d`)."""

    name: DnsName
    duration: str


class EnvironmentAction(_Doc, kw_only=True, frozen=True):
    """A day-2 action run on the deployed environment (see docs/day2-actions.md): type `workflows`
    runs its tasks, type `deploy` deploys again only `reconcileResources`."""

    name: DnsName
    type: Literal["deploy", "destroy", "workflows"]
    description: str = ""
    variables: list[Variable] = []
    hooks: EnvironmentHooks = EnvironmentHooks()
    workflows: ActionWorkflows | None = None
    reconcile_resources: list[NameRef] = []


class EnvironmentTemplateSpec(_Doc, kw_only=True, frozen=True):
    version: str = "v1"
    version_state: VersionState = "active"
    description: str = ""
    agents: list[NameRef] = []
    contexts: list[ContextRef] = []
    resources: list[EnvironmentResource] = []
    variables: list[Variable] = []
    hooks: EnvironmentTemplateHooks = EnvironmentTemplateHooks()
    schedules: list[Schedule] = []
    actions: list[EnvironmentAction] = []


class EnvironmentSpec(_Doc, kw_only=True, frozen=True):
    template: VersionedRef
    variables: list[Variable] = []
    envs: list[EnvVar] = []
    agents: list[NameRef] = []
    contexts: list[ContextRef] = []
    schedules: list[Schedule] = []
    schedule_optouts: list[ScheduleOptout] = []


class ConfigContextSpec(_Doc, kw_only=True, frozen=True):
    envs: list[EnvVar] = []
    files: list[ContextFile] = []
    variables: list[Variable] = []


class DriverSpec(_Doc, kw_only=True, frozen=True):
    config: DriverConfig
    version: str = "v1"
    version_state: VersionState = "active"
    inputs: list[ContextRef] = []
    outputs: Outputs = None  # the keys a task running this driver writes (see Task)


class StaticResourceSpec(_Doc, kw_only=True, frozen=True):
    """An existing thing described by values: each variable is an output of the resource
    (`resource.R.output.<variable>.value`); nothing is deployed or destroyed."""

    description: str = ""
    variables: list[Variable] = []


class Credentials(_Doc, kw_only=True, frozen=True):
    username: str = ""
    password: str = ""
    ssh_key: str = ""


class RepositorySpec(_Doc, kw_only=True, frozen=True):
    endpoint: str
    type: Literal["Git", "git"] = "Git"
    credentials: Credentials = Credentials()


# ---- documents ------------------------------------------------------------------------------

ApiVersion = Literal["trellis.dev/v1", "eaas.envmgmt.io/v1"]


class _Document(_Doc, kw_only=True, frozen=True, tag_field="kind"):
    api_version: ApiVersion
    metadata: Metadata


class ResourceTemplate(_Document, kw_only=True, frozen=True, tag="ResourceTemplate"):
    spec: ResourceTemplateSpec


class EnvironmentTemplate(_Document, kw_only=True, frozen=True, tag="EnvironmentTemplate"):
    spec: EnvironmentTemplateSpec


class Environment(_Document, kw_only=True, frozen=True, tag="Environment"):
    spec: EnvironmentSpec


class ConfigContext(_Document, kw_only=True, frozen=True, tag="ConfigContext"):
    spec: ConfigContextSpec = ConfigContextSpec()


class Driver(_Document, kw_only=True, frozen=True, tag="Driver"):
    spec: DriverSpec


class Repository(_Document, kw_only=True, frozen=True, tag="Repository"):
    spec: RepositorySpec


class StaticResource(_Document, kw_only=True, frozen=True, tag="StaticResource"):
    spec: StaticResourceSpec = StaticResourceSpec()


Document = ResourceTemplate | EnvironmentTemplate | Environment | ConfigContext | Driver | Repository | StaticResource
DOCUMENT_TYPES: tuple[type[msgspec.Struct], ...] = (
    ResourceTemplate,
    EnvironmentTemplate,
    Environment,
    ConfigContext,
    Driver,
    Repository,
    StaticResource,
)
KINDS: dict[str, type[msgspec.Struct]] = {t.__struct_config__.tag: t for t in DOCUMENT_TYPES}  # type: ignore[misc]

# Fields of Rafay's eaas.envmgmt.io/v1 documents that Trellis reads but does not implement:
# a warning names them (in trellis.dev/v1 they are unknown fields, an error).
RAFAY_UNIMPLEMENTED: dict[type[msgspec.Struct], frozenset[str]] = {
    Metadata: frozenset({"displayName", "id", "createdAt", "modifiedAt"}),
    ResourceTemplateSpec: frozenset(
        {"sharing", "iconURL", "readme", "secret", "artifact", "artifactWorkflowHandler"}
    ),
    EnvironmentTemplateSpec: frozenset({"sharing", "iconURL", "readme", "variableOverrides", "agentOverride"}),
    EnvironmentSpec: frozenset({"sharing", "iconURL", "files"}),
    ConfigContextSpec: frozenset({"sharing"}),
    DriverSpec: frozenset({"sharing"}),
    RepositorySpec: frozenset({"sharing", "agents", "options", "secret"}),
    StaticResourceSpec: frozenset({"sharing"}),
    IacOptions: frozenset(
        {
            "volumes",
            "withTerraformCloud",
            "lockTimeoutSeconds",
            "targetResources",
            "pluginDirs",
            "envVars",
        }
    ),
    DriverConfig: frozenset({"workflowHandler"}),
    ContainerOptions: frozenset({"kubeConfigOptions", "kubeOptions", "volumeOptions", "imagePullCredentials"}),
    Hook: frozenset({"sharing"}),
    Task: frozenset({"sharing"}),
    EnvironmentResource: frozenset({"sharing"}),
    ResourceOptions: frozenset({"dedicated"}),
    VariableOptions: frozenset({"schema", "displayMetadata"}),
    Override: frozenset({"displayOverridden", "restrictedKeyValues"}),
    Schedule: frozenset({"context"}),
    EnvironmentAction: frozenset({"context"}),
    FunctionOptions: frozenset({"languageVersion", "maxConcurrency", "numReplicas", "memoryLimitMi"}),
}
