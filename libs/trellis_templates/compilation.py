"""One compilation: resolve the environment's documents, layer variables, order resources, wire the DAG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trellis_core.workflow import DEFAULT_POOL, Action, Activity, TemplateRef, Workflow
from trellis_templates.bundle import Bundle
from trellis_templates.checks import check_schedules, unique_names
from trellis_templates.contexts import Attached, attach, context_scope
from trellis_templates.documents import (
    ContextRef,
    Environment,
    EnvironmentResource,
    EnvironmentTemplate,
    ResourceTemplate,
)
from trellis_templates.errors import Path, Problems, Source, closest
from trellis_templates.hooks import HookContext, env_for
from trellis_templates.outputs import check_plans
from trellis_templates.rendering import Renderer
from trellis_templates.resources import (
    Built,
    ResourcePlan,
    build_resource,
    find_cycle,
    hook_chain,
    resolve_entry,
    swap_entry,
    topo_order,
)
from trellis_templates.selectors import selections, selector_layer
from trellis_templates.variables import (
    Layer,
    Merged,
    env_encoding,
    inputs_layer,
    merge,
    required_missing,
    typed_value,
)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the run request adds to the documents."""

    action: Action
    tenant: str = ""
    run_id: str = ""
    requested_by: str = ""
    environment_id: str = ""
    email_relay_url: str = ""
    trigger: Mapping[str, Any] | None = None
    require_inputs: bool = True
    strict_inputs: bool = False  # a run variable no template declares is an error


class Compilation:
    """One compilation's state; `run` returns the workflow or None with problems reported."""

    def __init__(
        self,
        bundle: Bundle,
        problems: Problems,
        env: Environment,
        env_src: Source,
        inputs: dict[str, str],
        info: RunInfo,
    ) -> None:
        self.bundle, self.problems, self.env, self.env_src = bundle, problems, env, env_src
        self.inputs, self.info = inputs, info

    def run(self) -> Workflow | None:
        ref = self.env.spec.template
        found = self.bundle.find(
            EnvironmentTemplate,
            ref.name,
            ref.version,
            self.problems,
            (self.env_src, ("spec", "template", "name")),
        )
        if found is None:
            return None
        self.et, self.et_src = found
        check_schedules(self.et.spec.schedules, self.et_src, self.problems)
        check_schedules(self.env.spec.schedules, self.env_src, self.problems)
        unique_names([a.name for a in self.et.spec.actions], self.et_src, ("spec", "actions"), "action", self.problems)
        self.et_contexts = self._contexts(self.et.spec.contexts, self.et_src)
        self.env_contexts = self._contexts(self.env.spec.contexts, self.env_src)
        self._undeclared_environment_variables(self._declared_names(environment=False))
        self.input_layer = inputs_layer(
            self.inputs, self._declared_names(), self.problems, strict=self.info.strict_inputs
        )
        env_merged = merge(self._env_layers(), self.problems)
        self.env_merged = env_merged
        self.selections = selections(self.et, self.et_src, self.problems)
        self.selected = {s.variable for s in self.selections}
        required_missing(env_merged, self.env.metadata.name, self.problems, strict=self.info.require_inputs)
        base = self._base_scope()
        env_renderer = Renderer(self.problems, base, frozenset(r.name for r in self.et.spec.resources))
        env_values, env_late, env_sensitive = self._values(env_merged, env_renderer)
        base["environment"]["variables"] = env_values
        self.base, self.env_late = base, env_late
        env_renderer.late_variables = env_renderer.late_environment = env_late  # for environment hooks
        plans = self._plans(env_sensitive)
        check_plans(plans, [(self.et, self.et_src), (self.env, self.env_src)], self.bundle, self.problems)
        order = self._order(plans)
        if order is None or self.problems.errors:
            return None
        env_ctx = self._hook_context("", env_values, env_sensitive, env_renderer, self.et_src)
        activities = self._assemble(plans, order, env_ctx)
        if self.problems.errors:
            return None
        return Workflow(
            environment=self.env.metadata.name,
            template=TemplateRef(name=self.et.metadata.name, version=self.et.spec.version),
            action=self.info.action,
            activities=tuple(activities),
            scope=self.base,
        )

    # ---- inputs ---------------------------------------------------------------------------

    def _contexts(self, refs: Sequence[ContextRef], source: Source) -> list[Attached]:
        return attach(self.bundle, refs, source, ("spec", "contexts"), self.problems)

    def _context_layers(self, contexts: list[Attached]) -> list[Layer]:
        return [Layer(c.label, c.spec.variables, c.source, (*c.base, "variables")) for c in contexts]

    def _env_layers(self) -> list[Layer]:
        et, env = self.et, self.env
        return [
            *self._context_layers(self.et_contexts),
            Layer(
                f"EnvironmentTemplate {et.metadata.name!r}",
                et.spec.variables,
                self.et_src,
                ("spec", "variables"),
            ),
            *self._context_layers(self.env_contexts),
            Layer(f"Environment {env.metadata.name!r}", env.spec.variables, self.env_src, ("spec", "variables")),
            self.input_layer,
        ]

    def _undeclared_environment_variables(self, template_names: set[str]) -> None:
        """An Environment's variable no template declares is most likely misspelt: warn, with a hint."""
        for i, var in enumerate(self.env.spec.variables):
            if var.name not in template_names:
                self.problems.warn(
                    self.env_src,
                    ("spec", "variables", i, "name"),
                    f"variable {var.name!r} is not declared by any template",
                    closest(var.name, template_names),
                )

    def _declared_names(self, *, environment: bool = True) -> set[str]:
        names = {v.name for v in self.et.spec.variables}
        if environment:
            names |= {v.name for v in self.env.spec.variables}
        for c in self.et_contexts + self.env_contexts:
            names |= {v.name for v in c.spec.variables}
        for res in self.et.spec.resources:
            names |= {v.name for v in res.variables}
        for rt, _ in self.bundle.all(ResourceTemplate):
            names |= {v.name for v in rt.spec.variables}
        return names

    def _base_scope(self) -> dict[str, Any]:
        info, env = self.info, self.env
        contexts = context_scope(self.et_contexts + self.env_contexts)
        scope: dict[str, Any] = {
            "environment": {
                "name": env.metadata.name,
                "id": info.environment_id or env.metadata.name,
                "variables": {},
            },
            "run": {"id": info.run_id, "action": info.action, "requested_by": info.requested_by},
            "tenant": info.tenant,
            "context": contexts,
        }
        if info.trigger is not None:
            scope["trigger"] = dict(info.trigger)
        return scope

    def _values(self, merged: dict[str, Merged], renderer: Renderer) -> tuple[dict[str, Any], bool, set[str]]:
        """Typed, rendered values; whether any stays late; the names that are sensitive."""
        values: dict[str, Any] = {}
        late = False
        for name, var in merged.items():
            source, path = var.set_at
            value = renderer.value(typed_value(var, self.problems), source, path)
            late = late or _has_late(value, renderer)
            values[name] = value
        return values, late, {n for n, v in merged.items() if v.sensitive}

    # ---- resources ------------------------------------------------------------------------

    def _plans(self, env_sensitive: set[str]) -> list[ResourcePlan]:
        names = frozenset(r.name for r in self.et.spec.resources)
        plans: list[ResourcePlan] = []
        seen: set[str] = set()
        for i, entry in enumerate(self.et.spec.resources):
            path: Path = ("spec", "resources", i)
            if entry.name in seen:
                self.problems.error(self.et_src, (*path, "name"), f"duplicate resource name {entry.name!r}")
                continue
            seen.add(entry.name)
            tname, tversion, tpath = entry.name, entry.resource_options.version, (*path, "name")
            if entry.template is not None:
                tname, tversion, tpath = (
                    entry.template.name,
                    entry.template.version,
                    (*path, "template", "name"),
                )
            found = self.bundle.find(ResourceTemplate, tname, tversion, self.problems, (self.et_src, tpath))
            if found is None:
                continue
            rt, rt_src = found
            plans.append(self._plan(i, entry, rt, rt_src, names, env_sensitive))
        return plans

    def _plan(
        self,
        i: int,
        entry: EnvironmentResource,
        rt: ResourceTemplate,
        rt_src: Source,
        names: frozenset[str],
        env_sensitive: set[str],
    ) -> ResourcePlan:
        rt_contexts = self._contexts(rt.spec.contexts, rt_src)
        self.base["context"].update(context_scope(rt_contexts))  # `context.C` of the template's own
        merged = merge(self._resource_layers(i, entry, rt, rt_src, rt_contexts), self.problems)
        required_missing(merged, self.env.metadata.name, self.problems, strict=self.info.require_inputs)
        var_renderer = Renderer(self.problems, self.base, names, late_environment=self.env_late)
        values, late, sensitive = self._values(merged, var_renderer)
        scope = {**self.base, "variables": values}
        renderer = Renderer(self.problems, scope, names, late_variables=late, late_environment=self.env_late)
        renderer.refs.update(var_renderer.refs)
        encoded = {n: env_encoding(v, merged[n].value_type) for n, v in values.items()}
        env, secret_env, files = self._context_env((rt_contexts, self.et_contexts, self.env_contexts), renderer)
        env |= env_for(encoded, tf=False)
        secret = sensitive | (env_sensitive & set(values))
        masked = sorted(secret | {f"TRELLIS_VAR_{n}" for n in secret} | {f"TF_VAR_{n}" for n in secret} | secret_env)
        agents = tuple(a.name for a in entry.agents) or tuple(a.name for a in rt.spec.agents) or self._env_agents()
        ctx = HookContext(
            self.bundle,
            self.problems,
            renderer,
            rt_src,
            entry.name,
            agents,
            values,
            tuple(masked),
            env,
            self.info.action,
            self.info.email_relay_url,
            files,
        )
        plan = ResourcePlan(
            entry.name, i, entry, rt, rt_src, ctx, tf_env={f"TF_VAR_{k}": v for k, v in encoded.items()}
        )
        return plan

    def _resource_layers(
        self, i: int, entry: EnvironmentResource, rt: ResourceTemplate, rt_src: Source, rt_contexts: list[Attached]
    ) -> list[Layer]:
        """Variable layers of one resource, lowest first (docs/templates.md, Variables)."""
        env_layers = self._env_layers()
        n_et_ctx = len(self.et_contexts)
        layers = [
            Layer(f"ResourceTemplate {rt.metadata.name!r}", rt.spec.variables, rt_src, ("spec", "variables")),
            *self._context_layers(rt_contexts),
            *env_layers[:n_et_ctx],
            _overriding(env_layers[n_et_ctx], self.selected),
            Layer(
                f"EnvironmentTemplate resource {entry.name!r}",
                entry.variables,
                self.et_src,
                ("spec", "resources", i, "variables"),
            ),
            *(_overriding(layer, self.selected) for layer in env_layers[n_et_ctx + 1 :]),
        ]
        declared = {v.name for layer in layers if layer.adds for v in layer.variables}
        layers.append(
            selector_layer(entry.name, declared, self.selections, self.env_merged, self.et_src, self.problems)
        )
        return layers

    def _context_env(
        self, attached: Sequence[list[Attached]], renderer: Renderer
    ) -> tuple[dict[str, str], set[str], dict[str, str]]:
        """The environment variables and files every activity of a resource gets, and the secret ones."""
        env: dict[str, str] = {"TRELLIS_ACTION": self.info.action}
        secret: set[str] = set()
        files: dict[str, str] = {}
        for contexts in attached:
            for c in contexts:
                for j, e in enumerate(c.spec.envs):
                    env[e.key] = renderer.text(e.value, c.source, (*c.base, "envs", j, "value"))
                    if e.options.sensitive:
                        secret.add(e.key)
                    if e.options.required and not e.value:
                        self.problems.error(
                            c.source,
                            (*c.base, "envs", j, "value"),
                            f"required environment variable {e.key!r} has no value",
                        )
                for f in c.spec.files:
                    files[f.mount_path or f.name] = f.data
                    if f.options.sensitive:
                        secret.add(f.mount_path or f.name)
        for j, e in enumerate(self.env.spec.envs):
            env[e.key] = renderer.text(e.value, self.env_src, ("spec", "envs", j, "value"))
            if e.options.sensitive:
                secret.add(e.key)
        return env, secret, files

    def _env_agents(self) -> tuple[str, ...]:
        env_agents, template_agents = self.env.spec.agents, self.et.spec.agents
        return tuple(a.name for a in env_agents) or tuple(a.name for a in template_agents) or (DEFAULT_POOL,)

    def _hook_context(
        self, resource: str, values: dict[str, Any], sensitive: set[str], renderer: Renderer, source: Source
    ) -> HookContext:
        env = {"TRELLIS_ACTION": self.info.action} | env_for(
            {n: env_encoding(v, "text") for n, v in values.items()}, tf=False
        )
        masked = tuple(sorted(sensitive | {f"TRELLIS_VAR_{n}" for n in sensitive}))
        renderer.scope = {**self.base, "variables": values}
        return HookContext(
            self.bundle,
            self.problems,
            renderer,
            source,
            resource,
            self._env_agents(),
            values,
            masked,
            env,
            self.info.action,
            self.info.email_relay_url,
        )

    # ---- the graph ------------------------------------------------------------------------

    def _order(self, plans: list[ResourcePlan]) -> list[str] | None:
        """Resources in dependency order (declaration order breaks ties); cycles reported.

        Cycles are looked for among every resource of the template, also those whose template
        could not be found (already reported), so one run reports both.
        """
        built_names = [p.name for p in plans]
        entries = {r.name: (i, r) for i, r in reversed(list(enumerate(self.et.spec.resources)))}
        deps: dict[str, list[str]] = {n: [] for n in entries}
        for name, (i, entry) in entries.items():
            for j, dep in enumerate(entry.depends_on):
                path = ("spec", "resources", i, "dependsOn", j, "name")
                if dep.name not in entries:
                    msg = f"unknown resource {dep.name!r} in dependsOn"
                    self.problems.error(self.et_src, path, msg, closest(dep.name, entries))
                elif dep.name == name:
                    self.problems.error(self.et_src, path, f"resource {name!r} depends on itself")
                elif dep.name not in deps[name]:
                    deps[name].append(dep.name)
        self._built: dict[str, Built] = {}
        for plan in plans:
            self._built[plan.name] = build_resource(plan, self.info.action)
            for ref in plan.ctx.renderer.refs:
                if ref != plan.name and ref in deps and ref not in deps[plan.name]:
                    deps[plan.name].append(ref)
        names = sorted(entries, key=lambda n: entries[n][0])
        order = topo_order(names, deps)
        if order is None:
            cycle = find_cycle(names, deps)
            first = entries[cycle[0]]
            at = next((k for k, d in enumerate(first[1].depends_on) if d.name == cycle[1]), None)
            where: Path = ("spec", "resources", first[0]) + (("dependsOn", at) if at is not None else ())
            self.problems.error(self.et_src, where, "dependency cycle: " + " → ".join(cycle))
            return None
        if len(built_names) == len(names):  # every resource built: the order is the same
            self._deps = deps
            return order
        built = set(built_names)
        self._deps = {n: [d for d in deps[n] if d in built] for n in built_names}
        return topo_order(built_names, self._deps)

    def _assemble(self, plans: list[ResourcePlan], order: list[str], env_ctx: HookContext) -> list[Activity]:
        hooks, hpath = self.et.spec.hooks, ("spec", "hooks")
        out: list[Activity] = hook_chain(
            env_ctx, hooks.on_init, (*hpath, "onInit"), "environment/on-init", "on-init", ()
        )
        init_ids = [a.id for a in out]
        start = (init_ids[-1],) if init_ids else ()
        preds = self._deps
        if self.info.action == "destroy":
            order = list(reversed(order))
            preds = {n: [] for n in order}  # destroy: a resource waits for those that depend on it
            for m in order:
                for n in self._deps[m]:
                    preds[n].append(m)
        exits: dict[str, tuple[str, ...]] = {}
        failure_hooks: set[str] = set()
        for name in order:
            built = self._built[name]
            entry = tuple(dict.fromkeys(i for p in preds[name] for i in exits[p])) or start
            for act in built.activities:
                out.append(resolve_entry(act, entry))
            exits[name] = swap_entry(built.exits, entry)
            failure_hooks.update(built.failure_hooks)
        resource_ids = [a.id for a in out]
        success_deps = tuple(dict.fromkeys(i for n in order for i in exits[n])) or start
        out += hook_chain(
            env_ctx,
            hooks.on_success,
            (*hpath, "onSuccess"),
            "environment/on-success",
            "on-success",
            success_deps,
        )
        failure_deps = tuple(i for i in resource_ids if i not in failure_hooks)
        out += hook_chain(
            env_ctx,
            hooks.on_failure,
            (*hpath, "onFailure"),
            "environment/on-failure",
            "on-failure",
            failure_deps,
            "failure",
        )
        out += hook_chain(
            env_ctx,
            hooks.on_completion,
            (*hpath, "onCompletion"),
            "environment/on-completion",
            "on-completion",
            tuple(a.id for a in out),
            "always",
        )
        return out


def _overriding(layer: Layer, selected: set[str]) -> Layer:
    """Environment-level layers set the resource's variables of the same name; they add none.

    A variable the EnvironmentTemplate aliases with selectors sets only what its selectors name.
    """
    if not selected or not any(v.name in selected for v in layer.variables):
        return Layer(layer.label, layer.variables, layer.source, layer.path, adds=False)
    kept = [(i, v) for i, v in enumerate(layer.variables) if v.name not in selected]
    paths = tuple(layer.value_path(i, v.name) for i, v in kept)
    return Layer(layer.label, [v for _, v in kept], layer.source, layer.path, adds=False, value_paths=paths)


def _has_late(value: Any, renderer: Renderer) -> bool:
    if isinstance(value, str):
        return renderer.late(value)
    if isinstance(value, dict):
        return any(_has_late(v, renderer) for v in value.values())
    if isinstance(value, list):
        return any(_has_late(v, renderer) for v in value)
    return False
