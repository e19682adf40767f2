"""Static resources (docs/static-resources.md): resources of an EnvironmentTemplate that run
nothing and whose outputs are given. `kind: resource` names a StaticResource document, whose
variables are its outputs; `kind: environment` names another environment of the same tenant,
whose outputs (as the state store knew them when the run was compiled, `RunInfo.linked`) are
read. Pure: the compiler service asks the store and passes the answer in."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from trellis_core.events import SourceFile
from trellis_core.workflow import StaticOutputs
from trellis_templates.bundle import Bundle
from trellis_templates.documents import Document, EnvironmentResource, EnvironmentTemplate, StaticResource
from trellis_templates.errors import Path, Problems, Source, closest
from trellis_templates.loader import Budget, load_text
from trellis_templates.outputs import references
from trellis_templates.rendering import Renderer
from trellis_templates.resolved import Documents, LinkedEnvironment, RunInfo, resolve_documents
from trellis_templates.scope import Variables
from trellis_templates.validate import read_leniently
from trellis_templates.variables import Layer, merge, typed_value

# `kind: environment` written in any YAML or JSON style: a cheap look before a full parse.
_ENVIRONMENT_KIND = re.compile(r"""\bkind["']?\s*:\s*["']?environment\b""")


def is_static(entry: EnvironmentResource) -> bool:
    """A resource that runs nothing: `type: static`, or a kind other than resourcetemplate."""
    return entry.type == "static" or entry.kind != "resourcetemplate"


@dataclass(frozen=True, slots=True, kw_only=True)
class Statics:
    """The run's static resources: their outputs, and the output keys each is known to have
    (absent: not known at compile time, e.g. `trellis template compile` without a store)."""

    outputs: dict[str, StaticOutputs] = field(default_factory=dict)
    keys: dict[str, set[str]] = field(default_factory=dict)
    ambiguous: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)


def resolve_statics(variables: Variables, *, info: RunInfo, problems: Problems) -> Statics:
    """Check every static resource of the template and give it its outputs."""
    documents = variables.documents
    statics = Statics()
    for index, entry in enumerate(documents.template.spec.resources):
        if not is_static(entry) or entry.name in statics.outputs:
            continue
        path: Path = ("spec", "resources", index)
        if not _entry_ok(entry, documents, path, problems):
            continue
        if entry.kind == "resource":
            _static_resource(entry, variables, path, statics, problems)
        else:
            _linked_environment(entry, documents, path, statics, info=info, problems=problems)
    return statics


def _entry_ok(entry: EnvironmentResource, documents: Documents, path: Path, problems: Problems) -> bool:
    """What a static resource cannot have, reported at the field that has it."""
    source, ok = documents.template_source, True
    if entry.kind == "resourcetemplate":
        problems.error(
            source,
            (*path, "type"),
            f"resource {entry.name!r}: a resourcetemplate is deployed by the run, it cannot be static",
            "for given outputs write kind: resource (a StaticResource) or kind: environment (another environment)",
        )
        return False
    unusable = (
        ("template", entry.template is not None, "it names no ResourceTemplate"),
        ("resourceOptions", bool(entry.resource_options.version), "a static resource has no versions"),
        ("variables", bool(entry.variables), "it has no variables to bind (its outputs are given)"),
        ("agents", bool(entry.agents), "nothing of it runs on an agent"),
        ("dependsOn", bool(entry.depends_on), "it runs nothing, so it waits for nothing"),
    )
    for key, present, why in unusable:
        if present:
            problems.error(source, (*path, key), f"static resource {entry.name!r}: {key} cannot apply: {why}", key=True)
            ok = False
    if entry.kind == "environment" and entry.name == documents.environment.metadata.name:
        problems.error(
            source,
            (*path, "name"),
            f"static resource {entry.name!r} of kind environment names the environment being compiled: "
            "an environment cannot read its own outputs",
        )
        ok = False
    return ok


def _static_resource(
    entry: EnvironmentResource, variables: Variables, path: Path, statics: Statics, problems: Problems
) -> None:
    """`kind: resource`: the StaticResource's variables, rendered at compile time, are the outputs."""
    documents = variables.documents
    found = documents.bundle.find(
        StaticResource, entry.name, "", problems=problems, where=(documents.template_source, (*path, "name"))
    )
    if found is None:
        return
    document, source = found
    label = f"StaticResource {entry.name!r}"
    merged = merge([Layer(label, document.spec.variables, source, ("spec", "variables"))], problems)
    # Known at compile time: the environment's names, never another resource's outputs.
    renderer = Renderer(problems, variables.scope, frozenset(), contexts=variables.visible_contexts)
    outputs: dict[str, dict[str, Any]] = {}
    for name, variable in merged.items():
        _, at = variable.set_at
        value = renderer.value(typed_value(variable, problems), source, at)
        if variable.sensitive:
            value = variables.sealer.value(value, f"variable {name!r} of {label}", source, at)
            outputs[name] = {"value": value, "sensitive": True}
        else:
            outputs[name] = {"value": value}
    statics.outputs[entry.name] = StaticOutputs(kind="resource", outputs=outputs)
    statics.keys[entry.name] = set(outputs)


def _linked_environment(
    entry: EnvironmentResource,
    documents: Documents,
    path: Path,
    statics: Statics,
    *,
    info: RunInfo,
    problems: Problems,
) -> None:
    """`kind: environment`: the named environment's outputs, every resource's together."""
    name, source = entry.name, documents.template_source
    if info.linked is None:  # compiled without a state store: the outputs are not known here
        statics.outputs[name] = StaticOutputs(kind="environment", environment=name)
        return
    linked = info.linked.get(name, LinkedEnvironment(exists=False))
    tenant = f" of tenant {info.tenant!r}" if info.tenant else ""
    if linked.exists and linked.deployed:
        outputs, ambiguous = flatten_outputs(linked.outputs)
        statics.outputs[name] = StaticOutputs(kind="environment", environment=name, outputs=outputs)
        statics.keys[name] = set(outputs)
        statics.ambiguous[name] = ambiguous
        return
    if linked.exists:
        message = f"static resource {name!r}: environment {name!r}{tenant} is not deployed, so it has no outputs"
        hint = "deploy it first"
    else:
        message = (
            f"static resource {name!r}: no environment {name!r}{tenant} (a static resource of kind environment "
            "reads the outputs of another environment of the same tenant)"
        )
        hint = closest(name, sorted(info.linked)) or "create and deploy that environment first"
    if info.action == "deploy":
        problems.error(source, (*path, "name"), message, hint)
        return
    # A destroy goes on: the run reads the outputs this environment's last deploy recorded.
    problems.warn(source, (*path, "name"), message + ": the destroy reads those of this environment's last deploy")
    statics.outputs[name] = StaticOutputs(kind="environment", environment=name)


def flatten_outputs(
    by_resource: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, ...]]]:
    """An environment's outputs (resource -> key -> entry) as one static resource's (key ->
    entry); a key two of its resources have is left out and named with them."""
    owners: dict[str, list[str]] = {}
    for resource in sorted(by_resource):
        for key in by_resource[resource]:
            owners.setdefault(key, []).append(resource)
    outputs = {key: dict(by_resource[names[0]][key]) for key, names in sorted(owners.items()) if len(names) == 1}
    ambiguous = {key: tuple(names) for key, names in owners.items() if len(names) > 1}
    return outputs, ambiguous


def check_static_reads(
    statics: Statics, documents: Sequence[tuple[Document, Source | None]], problems: Problems
) -> None:
    """Each `resource.R.output.K` in `documents` where R is static and K is not one of its outputs."""
    if not statics.keys:
        return
    for document, source in documents:
        _walk(msgspec.to_builtins(document), (), source, statics, problems)


def _walk(value: Any, path: Path, source: Source | None, statics: Statics, problems: Problems) -> None:
    if isinstance(value, str):
        for resource, key in references(value):
            keys = statics.keys.get(resource)
            if keys is None or key in keys:
                continue
            problems.error(source, path, *_missing(statics, resource, key))
    elif isinstance(value, dict):
        for k, item in value.items():
            _walk(item, (*path, k), source, statics, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, (*path, index), source, statics, problems)


def _missing(statics: Statics, resource: str, key: str) -> tuple[str, str]:
    given = statics.outputs[resource]
    keys = statics.keys[resource]
    listing = ", ".join(sorted(keys)) or "none"
    if given.kind == "resource":
        return (
            f"static resource {resource!r} has no output {key!r}: StaticResource {resource!r} has the variables "
            f"{listing}",
            closest(key, keys) or f"add a variable {key!r} to StaticResource {resource!r}",
        )
    owners = statics.ambiguous.get(resource, {}).get(key)
    if owners:
        return (
            f"static resource {resource!r}: output {key!r} of environment {given.environment!r} is ambiguous: "
            f"its resources {', '.join(owners)} each have one",
            "rename the output in all but one of those resources",
        )
    return (
        f"static resource {resource!r}: environment {given.environment!r} has no output {key!r} (its outputs: "
        f"{listing})",
        closest(key, keys) or f"add the output {key!r} to a resource of environment {given.environment!r}",
    )


def linked_names(template: EnvironmentTemplate) -> tuple[str, ...]:
    """The environments a template's `kind: environment` resources read, once each."""
    return tuple(dict.fromkeys(e.name for e in template.spec.resources if e.kind == "environment"))


def may_link(sources: Iterable[SourceFile]) -> bool:
    """Whether any file could hold a `kind: environment` resource (else no need to parse for one)."""
    return any(_ENVIRONMENT_KIND.search(f.text) for f in sources)


def linked_environments(sources: Sequence[SourceFile], environment_name: str) -> tuple[str, ...]:
    """The environments the named Environment's template reads through `kind: environment`
    resources: what the compiler service asks the state store about before compiling. A bundle
    that cannot be resolved names none (its compilation reports why)."""
    if not may_link(sources):
        return ()
    problems = Problems()
    budget = Budget()
    raws = [raw for f in sources for raw in load_text(f.text, f.path, problems, budget=budget)]
    docs, unreadable = read_leniently(raws, problems)
    bundle = Bundle.index(docs, problems, unreadable)
    found = bundle.environment(environment_name, problems)
    documents = resolve_documents(bundle, found[0], found[1], problems) if found is not None else None
    return linked_names(documents.template) if documents is not None else ()
