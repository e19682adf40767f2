"""One resource's activities: hooks, checkout, OpenTofu/Terraform stages or custom tasks."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trellis_core.workflow import Action, Activity, CheckoutSpec, IacSpec, IacStage, IacTool, RunWhen, StateBackend
from trellis_templates.documents import (
    DeployStages,
    DestroyStages,
    EnvironmentResource,
    Hook,
    IacOptions,
    ProviderStageHooks,
    Repository,
    ResourceTemplate,
    StageHooks,
    Task,
)
from trellis_templates.errors import Path, Source, closest
from trellis_templates.hooks import HookContext, hook_activity, resolve_driver
from trellis_templates.specs import input_contexts

ENTRY = "@entry"  # stands for the last activities of the resources this one comes after
DEPLOY_STAGES: tuple[IacStage, ...] = ("init", "plan", "apply", "output")
DESTROY_STAGES: tuple[IacStage, ...] = ("init", "plan", "destroy")
DRIFT_STAGES: tuple[IacStage, ...] = ("init", "plan")


@dataclass(slots=True, kw_only=True)
class ResourcePlan:
    """A resource of the environment with its template resolved and its variables merged."""

    name: str
    index: int
    entry: EnvironmentResource
    template: ResourceTemplate
    source: Source | None
    ctx: HookContext
    tf_env: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Built:
    """A resource's activities (deps may hold ENTRY) and the ids others need to wire to it."""

    activities: list[Activity] = field(default_factory=list)
    main: list[str] = field(default_factory=list)
    failure_hooks: list[str] = field(default_factory=list)
    exits: tuple[str, ...] = ()


def hook_chain(
    ctx: HookContext,
    hooks: Sequence[Hook],
    *,
    path: Path,
    prefix: str,
    stage: str,
    first_deps: tuple[str, ...],
    first_when: RunWhen = "success",
) -> list[Activity]:
    """Hooks of one list, in order: each after the previous one (see docs/templates.md)."""
    out: list[Activity] = []
    deps, when = first_deps, first_when
    seen: set[str] = set()
    for index, hook in enumerate(hooks):
        if hook.name in seen:
            msg = f"duplicate hook name {hook.name!r} in this list"
            ctx.problems.error(ctx.source, (*path, index, "name"), msg)
            continue
        seen.add(hook.name)
        act = hook_activity(ctx, hook, (*path, index), f"{prefix}/{hook.name}", stage=stage, depends_on=deps, when=when)
        if act is not None:
            out.append(act)
            deps, when = (act.id,), "success"
    return out


def build_resource(plan: ResourcePlan, action: Action) -> Built:
    """A resource's activities: onInit hooks, checkout, stages or tasks, then onSuccess, onFailure, onCompletion."""
    spec = plan.template.spec
    hooks, built = spec.hooks, Built()

    def extend(activities: list[Activity]) -> tuple[str, ...] | None:
        built.activities.extend(activities)
        built.main.extend(activity.id for activity in activities)
        return (activities[-1].id,) if activities else None

    tails = extend(_resource_hooks(plan, hooks.on_init, "onInit", "on-init", first_deps=(ENTRY,))) or (ENTRY,)
    if spec.repository_options is not None:
        checkout = _checkout(plan, tails)
        if checkout is not None:
            tails = extend([checkout]) or tails
    custom = spec.provider == "custom"
    if custom:
        _no_provider_hooks(plan)
    tails = _tasks(plan, action, tails, built) if custom else _stages(plan, action, tails, extend)
    success = _resource_hooks(plan, hooks.on_success, "onSuccess", "on-success", first_deps=tails)
    main_deps = tuple(built.main) or (ENTRY,)
    failure = _resource_hooks(
        plan, hooks.on_failure, "onFailure", "on-failure", first_deps=main_deps, first_when="failure"
    )
    success_tail = (success[-1].id,) if success else tails
    ends = _unique((*success_tail, *((failure[-1].id,) if failure else ())))
    completion = _resource_hooks(
        plan, hooks.on_completion, "onCompletion", "on-completion", first_deps=ends, first_when="always"
    )
    built.activities.extend(success + failure + completion)
    built.failure_hooks = [activity.id for activity in failure]
    built.exits = _unique((*success_tail, *((completion[-1].id,) if completion else ())))
    return built


def _resource_hooks(
    plan: ResourcePlan,
    hooks: Sequence[Hook],
    key: str,
    stage: str,
    *,
    first_deps: tuple[str, ...],
    first_when: RunWhen = "success",
) -> list[Activity]:
    """One of the resource's hook lists: `spec.hooks.<key>`, ids `resource/<name>/<stage>/<hook>`."""
    return hook_chain(
        plan.ctx,
        hooks,
        path=("spec", "hooks", key),
        prefix=f"resource/{plan.name}/{stage}",
        stage=stage,
        first_deps=first_deps,
        first_when=first_when,
    )


def _no_provider_hooks(plan: ResourcePlan) -> None:
    """Stage hooks of a custom resource would never run: an error, not a silent drop."""
    provider = plan.template.spec.hooks.provider
    for key, hooks in (("openTofu", provider.open_tofu), ("terraform", provider.terraform)):
        if hooks is not None:
            plan.ctx.problems.error(
                plan.ctx.source,
                ("spec", "hooks", "provider", key),
                f"hooks.provider.{key} never run: a custom resource has no {key} stages",
                "use the resource hooks spec.hooks.onInit, onSuccess, onFailure, onCompletion, "
                "or a task in spec.providerOptions.custom.tasks",
                key=True,
            )


def _unique(ids: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


def _checkout(plan: ResourcePlan, deps: tuple[str, ...]) -> Activity | None:
    ctx, opts = plan.ctx, plan.template.spec.repository_options
    assert opts is not None
    path, renderer = ("spec", "repositoryOptions"), ctx.renderer
    url, username, password, ssh_key = opts.url, "", "", ""
    if opts.name:
        found = ctx.bundle.find(Repository, opts.name, "", problems=ctx.problems, where=(ctx.source, (*path, "name")))
        if found is None:
            return None
        repo, repository_source = found
        url = renderer.text(repo.spec.endpoint, repository_source, ("spec", "endpoint"))
        creds = repo.spec.credentials
        username, password, ssh_key = creds.username, creds.password, creds.ssh_key
        if ctx.sealer is not None:
            at = ("spec", "credentials")
            password = ctx.sealer.text(password, "password", repository_source, (*at, "password"))
            ssh_key = ctx.sealer.text(ssh_key, "sshKey", repository_source, (*at, "sshKey"))
    elif not url:
        ctx.problems.error(ctx.source, path, "repositoryOptions needs a Repository name or a url")
        return None
    else:
        url = renderer.text(url, ctx.source, (*path, "url"))
    spec = CheckoutSpec(
        url=url,
        revision=renderer.text(opts.branch, ctx.source, (*path, "branch")),
        path=renderer.text(opts.directory_path, ctx.source, (*path, "directoryPath")),
        username=username,
        password=password,
        ssh_key=ssh_key,
    )
    secret = tuple(k for k, v in (("password", password), ("sshKey", ssh_key)) if v)
    return _stage_activity(plan, "checkout", spec, deps=deps, timeout=None, extra_sensitive=secret)


def _stage_activity(
    plan: ResourcePlan,
    stage: str,
    spec: IacSpec | CheckoutSpec,
    *,
    deps: tuple[str, ...],
    timeout: float | None,
    extra_sensitive: tuple[str, ...] = (),
) -> Activity:
    ctx = plan.ctx
    return Activity(
        id=f"resource/{plan.name}/{stage}",
        kind="container",
        spec=spec,
        resource=plan.name,
        stage=stage,
        depends_on=deps,
        agents=ctx.agents,
        workspace=plan.name,
        timeout_seconds=timeout,
        inputs=ctx.inputs,
        sensitive=_unique((*ctx.sensitive, *extra_sensitive)),
    )


Extend = Callable[[list[Activity]], tuple[str, ...] | None]


def _stages(
    plan: ResourcePlan, action: Action, tails: tuple[str, ...], add: Extend, *, drift: bool = False
) -> tuple[str, ...]:
    """The OpenTofu/Terraform stages in order, each between its provider `before` and `after` hooks;
    a drift check's are init and a plan that reports what would change, without hooks."""
    ctx, spec = plan.ctx, plan.template.spec
    tool: IacTool = "opentofu" if spec.provider == "opentofu" else "terraform"
    key = "openTofu" if tool == "opentofu" else "terraform"
    provider_options = spec.provider_options
    own = provider_options.open_tofu if tool == "opentofu" else provider_options.terraform
    iac = own or provider_options.open_tofu or provider_options.terraform or IacOptions()
    written = key if getattr(provider_options, _attr(key)) is not None else _other(key)
    options_path = ("spec", "providerOptions", written)
    image, env = _iac_driver(plan)
    stage_hooks = None if drift else _provider_stage_hooks(plan, action, key)
    renderer = ctx.renderer
    backend = tuple(
        renderer.text(backend_config, ctx.source, (*options_path, "backendConfigs", index))
        for index, backend_config in enumerate(iac.backend_configs)
    )
    var_files = tuple(
        renderer.text(var_file, ctx.source, (*options_path, "varFiles", index))
        for index, var_file in enumerate(iac.var_files)
    )
    timeout = float(iac.timeout_seconds) if iac.timeout_seconds is not None else None
    state_backend = _system_backend(plan, iac, options_path)
    hooks_path = ("spec", "hooks", "provider", key, action)
    for stage in DRIFT_STAGES if drift else DEPLOY_STAGES if action == "deploy" else DESTROY_STAGES:
        hooks: StageHooks = getattr(stage_hooks, stage) if stage_hooks else StageHooks()
        prefix = f"resource/{plan.name}/{stage}"
        before_path = (*hooks_path, stage, "before")
        before = hook_chain(
            ctx, hooks.before, path=before_path, prefix=f"{prefix}/before", stage=stage, first_deps=tails
        )
        tails = add(before) or tails
        iac_spec = IacSpec(
            tool=tool,
            stage=stage,
            image=image,
            destroy=action == "destroy" and stage == "plan",
            backend_configs=backend,
            var_files=var_files,
            refresh=iac.refresh,
            lock=iac.lock,
            env=dict(ctx.env) | plan.tf_env | env,
            state_backend=state_backend,
            drift=drift and stage == "plan",
        )
        tails = add([_stage_activity(plan, stage, iac_spec, deps=tails, timeout=timeout)]) or tails
        after_path = (*hooks_path, stage, "after")
        after = hook_chain(ctx, hooks.after, path=after_path, prefix=f"{prefix}/after", stage=stage, first_deps=tails)
        tails = add(after) or tails
    return tails


def _system_backend(plan: ResourcePlan, iac: IacOptions, options_path: Path) -> StateBackend | None:
    """`backendType: system`: Trellis keeps the state (the compiler service fills in the address
    and the run's credential); the template's own backend settings would fight it."""
    if iac.backend_type != "system" and not iac.use_system_state_store:
        return None
    if iac.backend_configs:
        plan.ctx.problems.error(
            plan.ctx.source,
            (*options_path, "backendConfigs"),
            "backendConfigs cannot be combined with backendType: system (Trellis configures the http backend)",
            "remove backendConfigs, or use backendType: custom to keep your own backend",
        )
    return StateBackend()


def _provider_stage_hooks(plan: ResourcePlan, action: Action, key: str) -> DeployStages | DestroyStages | None:
    """The stage hooks for the resource's tool and `action`; the other tool's are ignored, with a warning."""
    spec, ctx = plan.template.spec, plan.ctx
    provider_hooks: ProviderStageHooks | None = getattr(spec.hooks.provider, _attr(key))
    if getattr(spec.hooks.provider, _attr(_other(key))) is not None:
        ctx.problems.warn(
            ctx.source,
            ("spec", "hooks", "provider", _other(key)),
            f"hooks for {_other(key)} are ignored: the resource's provider is {spec.provider}",
        )
    if provider_hooks is None:
        return None
    return provider_hooks.deploy if action == "deploy" else provider_hooks.destroy


def _attr(key: str) -> str:
    return "open_tofu" if key == "openTofu" else "terraform"


def _other(key: str) -> str:
    return "terraform" if key == "openTofu" else "openTofu"


def _iac_driver(plan: ResourcePlan) -> tuple[str, dict[str, str]]:
    options, ctx = plan.template.spec.provider_options, plan.ctx
    ref, key = (options.driver, "driver") if options.driver else (options.workflow_handler, "workflowHandler")
    if ref is None:
        return "", {}
    path = ("spec", "providerOptions")
    resolved = resolve_driver(ctx, ref, (*path, key))
    if resolved is None:
        return "", {}
    config, driver_source, driver_path = resolved.config, resolved.source, resolved.path
    if config.type != "container" or config.container is None:
        ctx.problems.error(ctx.source, (*path, key), "OpenTofu/Terraform stages need a container driver")
        return "", {}
    container, container_path = config.container, (*driver_path, "container")
    image = ctx.renderer.text(container.image or "", driver_source, (*container_path, "image"))
    input_env, _, _ = input_contexts(ctx, resolved.inputs)
    return image, input_env | ctx.renderer.texts(container.env_vars, driver_source, (*container_path, "envVars"))


def _tasks(plan: ResourcePlan, action: Action, tails: tuple[str, ...], built: Built) -> tuple[str, ...]:
    ctx, spec = plan.ctx, plan.template.spec
    custom, path = spec.provider_options.custom, ("spec", "providerOptions", "custom")
    if custom is None or not custom.tasks:
        ctx.problems.error(
            ctx.source, ("spec", "providerOptions"), "a custom resource needs providerOptions.custom.tasks"
        )
        return tails
    tasks: dict[str, tuple[int, Task]] = {}
    for index, task in enumerate(custom.tasks):
        if task.name in tasks:
            ctx.problems.error(ctx.source, (*path, "tasks", index, "name"), f"duplicate task name {task.name!r}")
        else:
            tasks[task.name] = (index, task)
    deps: dict[str, list[str]] = {n: [] for n in tasks}
    for name, (index, task) in tasks.items():
        for position, dep in enumerate(task.depends_on):
            if dep not in tasks:
                ctx.problems.error(
                    ctx.source,
                    (*path, "tasks", index, "dependsOn", position),
                    f"unknown task {dep!r} in dependsOn",
                    closest(dep, tasks),
                )
            elif dep == name:
                msg = "a task cannot depend on itself"
                ctx.problems.error(ctx.source, (*path, "tasks", index, "dependsOn", position), msg)
            else:
                deps[name].append(dep)
    if action == "destroy" and custom.reverse_on_destroy:
        reverse: dict[str, list[str]] = {n: [] for n in tasks}
        for name, ups in deps.items():
            for up in ups:
                reverse[up].append(name)
        deps = reverse
    order = topo_order(list(tasks), deps)
    if order is None:
        cycle = find_cycle(list(tasks), deps)
        first = tasks[cycle[0]][0]
        ctx.problems.error(
            ctx.source, (*path, "tasks", first, "dependsOn"), "task dependency cycle: " + " → ".join(cycle)
        )
        return tails
    ids = {n: f"resource/{plan.name}/task/{n}" for n in tasks}
    depended = {d for ups in deps.values() for d in ups}
    for name in order:
        index, task = tasks[name]
        task_deps = tuple(ids[d] for d in deps[name]) or tails
        act = hook_activity(ctx, task, (*path, "tasks", index), ids[name], stage="task", depends_on=task_deps)
        if act is not None:
            built.activities.append(act)
            built.main.append(act.id)
    sinks = tuple(ids[n] for n in order if n not in depended)
    return sinks or tails


def topo_order(names: list[str], deps: dict[str, list[str]]) -> list[str] | None:
    """Kahn's algorithm, ties broken by declaration order; None when there is a cycle."""
    index = {n: position for position, n in enumerate(names)}
    waiting = {n: len(set(deps[n])) for n in names}
    dependents: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for d in set(deps[n]):
            dependents[d].append(n)
    ready = [(index[n], n) for n in names if waiting[n] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for m in dependents[n]:
            waiting[m] -= 1
            if waiting[m] == 0:
                heapq.heappush(ready, (index[m], m))
    return order if len(order) == len(names) else None


def find_cycle(names: list[str], deps: dict[str, list[str]]) -> list[str]:
    """One dependency cycle as a path that ends where it starts: a → b → c → a."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in deps[n]:
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in names:
        if n not in state and (cycle := visit(n)):
            return cycle
    return []
