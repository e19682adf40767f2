"""Properties of the compiled graph over random environments (hypothesis)."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trellis_core.workflow import Workflow
from trellis_templates.compiler import compile_bundle
from trellis_templates.documents import (
    CustomOptions,
    Environment,
    EnvironmentResource,
    EnvironmentSpec,
    EnvironmentTemplate,
    EnvironmentTemplateHooks,
    EnvironmentTemplateSpec,
    Hook,
    HookOptions,
    Metadata,
    NameRef,
    ProviderOptions,
    ResourceHooks,
    ResourceTemplate,
    ResourceTemplateSpec,
    ScriptOptions,
    Task,
    Variable,
    VersionedRef,
)

API = "trellis.dev/v1"
MAIN_STAGES = {"checkout", "init", "plan", "apply", "output", "destroy", "task"}


def script_hook(name: str) -> Hook:
    return Hook(name=name, type="script", options=HookOptions(script=ScriptOptions(script=f"echo {name}")))


hook_lists = st.lists(st.sampled_from(["h1", "h2", "h3"]), unique=True, max_size=2).map(
    lambda names: [script_hook(n) for n in names]
)


@st.composite
def resource_hooks(draw: st.DrawFn) -> ResourceHooks:
    return ResourceHooks(
        on_init=draw(hook_lists),
        on_success=draw(hook_lists),
        on_failure=draw(hook_lists),
        on_completion=draw(hook_lists),
    )


@st.composite
def tasks(draw: st.DrawFn) -> list[Task]:
    count = draw(st.integers(1, 4))
    out = []
    for i in range(count):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=2)) if i else []
        out.append(
            Task(
                name=f"t{i}",
                type="script",
                depends_on=[f"t{d}" for d in deps],
                options=HookOptions(script=ScriptOptions(script=f"echo t{i}")),
            )
        )
    return out


@st.composite
def environments(draw: st.DrawFn) -> tuple[list[Any], dict[str, set[str]]]:
    """Documents of a random environment and, for each resource, the resources it must follow."""
    count = draw(st.integers(1, 6))
    docs: list[Any] = []
    entries = []
    after: dict[str, set[str]] = {}
    for i in range(count):
        name = f"r{i}"
        depends = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=2)) if i else []
        reads = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=2)) if i else []
        variables = [Variable(name=f"in_{j}", value=f"$(resource.r{j}.output.k.value)$") for j in reads]
        custom = draw(st.booleans())
        options = (
            ProviderOptions(custom=CustomOptions(tasks=draw(tasks()), reverse_on_destroy=draw(st.booleans())))
            if custom
            else ProviderOptions()
        )
        spec = ResourceTemplateSpec(
            provider="custom" if custom else "opentofu",
            provider_options=options,
            variables=variables,
            hooks=draw(resource_hooks()),
        )
        docs.append(ResourceTemplate(api_version=API, metadata=Metadata(name=name), spec=spec))
        entries.append(EnvironmentResource(name=name, depends_on=[NameRef(name=f"r{d}") for d in depends]))
        after[name] = {f"r{d}" for d in [*depends, *reads]}
    hooks = EnvironmentTemplateHooks(
        on_init=draw(hook_lists),
        on_success=draw(hook_lists),
        on_failure=draw(hook_lists),
        on_completion=draw(hook_lists),
    )
    order = draw(st.permutations(entries))  # declaration order must not matter for correctness
    docs.append(
        EnvironmentTemplate(
            api_version=API,
            metadata=Metadata(name="stack"),
            spec=EnvironmentTemplateSpec(resources=list(order), hooks=hooks),
        )
    )
    docs.append(
        Environment(
            api_version=API,
            metadata=Metadata(name="env"),
            spec=EnvironmentSpec(template=VersionedRef(name="stack")),
        )
    )
    return docs, after


def ancestors(wf: Workflow) -> dict[str, int]:
    bit = {a.id: 1 << i for i, a in enumerate(wf.activities)}
    out: dict[str, int] = {}
    for a in wf.activities:
        acc = 0
        for d in a.depends_on:
            assert d in out, f"{a.id} depends on {d}, which is not before it"
            acc |= out[d] | bit[d]
        out[a.id] = acc
    return out


def comes_before(anc: dict[str, int], wf: Workflow, first: str, then: str) -> bool:
    index = {a.id: i for i, a in enumerate(wf.activities)}
    return bool(anc[then] >> index[first] & 1)


PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(environments(), st.sampled_from(["deploy", "destroy"]))
def test_the_graph_is_acyclic_in_topological_order_with_unique_ids(env: Any, action: str) -> None:
    docs, _ = env
    wf = compile_bundle(docs, "env", {}, action).workflow  # type: ignore[arg-type]
    assert wf is not None
    assert len({a.id for a in wf.activities}) == len(wf.activities)
    ancestors(wf)  # asserts every dependency comes earlier: no cycle can exist


@PROPS
@given(environments(), st.sampled_from(["deploy", "destroy"]))
def test_stages_follow_their_resource_and_the_resources_it_comes_after(env: Any, action: str) -> None:
    docs, after = env
    wf = compile_bundle(docs, "env", {}, action).workflow  # type: ignore[arg-type]
    assert wf is not None
    anc = ancestors(wf)
    stages: dict[str, list[str]] = {}
    chained: dict[str, list[str]] = {}  # checkout and OpenTofu stages: one after the other
    for a in wf.activities:
        if a.resource and a.stage in MAIN_STAGES:
            stages.setdefault(a.resource, []).append(a.id)
            if a.stage != "task":
                chained.setdefault(a.resource, []).append(a.id)
    for ids in chained.values():
        for prev, nxt in itertools.pairwise(ids):
            assert comes_before(anc, wf, prev, nxt)
    for resource in stages:
        for upstream in after[resource]:
            first, then = (upstream, resource) if action == "deploy" else (resource, upstream)
            for a in stages.get(first, []):
                for b in stages.get(then, []):
                    assert comes_before(anc, wf, a, b), f"{action}: {a} must precede {b}"


@PROPS
@given(environments(), st.sampled_from(["deploy", "destroy"]))
def test_environment_hooks_wrap_every_other_activity(env: Any, action: str) -> None:
    docs, _ = env
    wf = compile_bundle(docs, "env", {}, action).workflow  # type: ignore[arg-type]
    assert wf is not None
    anc = ancestors(wf)
    ids = [a.id for a in wf.activities]
    inits = [i for i in ids if i.startswith("environment/on-init/")]
    completions = [i for i in ids if i.startswith("environment/on-completion/")]
    for other in ids:
        if inits and other not in inits:
            assert comes_before(anc, wf, inits[-1], other) or other == inits[-1]
        if completions and other not in completions:
            assert comes_before(anc, wf, other, completions[0])


@PROPS
@given(environments(), st.sampled_from(["deploy", "destroy"]))
def test_compiling_twice_gives_identical_bytes(env: Any, action: str) -> None:
    docs, _ = env
    first = compile_bundle(docs, "env", {}, action).workflow  # type: ignore[arg-type]
    second = compile_bundle(docs, "env", {}, action).workflow  # type: ignore[arg-type]
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
