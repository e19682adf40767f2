"""The compiler: documents + environment + inputs + action -> the activity DAG, or every problem.

Pure: no I/O, no clock, no randomness; the same input gives byte-identical output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from trellis_core.events import Problem, SourceFile
from trellis_core.workflow import NO_PURPOSE, Action, RunPurpose, Workflow
from trellis_templates import expressions
from trellis_templates.bundle import Bundle
from trellis_templates.compilation import RunInfo, compile_environment
from trellis_templates.documents import (
    Document,
    Environment,
    EnvironmentSpec,
    EnvironmentTemplate,
    Metadata,
    VersionedRef,
)
from trellis_templates.errors import Path, Problems, Source
from trellis_templates.loader import Budget, gc_paused, load_paths, load_text
from trellis_templates.resolved import LinkedEnvironment, resolve_documents
from trellis_templates.scope import declared_sensitive
from trellis_templates.validate import SourceDocument, Unreadable, parse_documents, read_leniently


@dataclass(frozen=True, slots=True)
class CompileResult:
    workflow: Workflow | None
    warnings: tuple[Problem, ...] = ()
    errors: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.workflow is not None and not self.errors


def compile_bundle(
    documents: Sequence[SourceDocument | Document],
    environment_name: str,
    inputs: Mapping[str, str] | None = None,
    action: Action = "deploy",
    *,
    tenant: str = "",
    run_id: str = "",
    requested_by: str = "",
    environment_id: str = "",
    email_relay_url: str = "",
    trigger: Mapping[str, Any] | None = None,
    require_inputs: bool = True,
    strict_inputs: bool = False,
    unreadable: Unreadable = frozenset(),
    seal: Callable[[str], str] | None = None,
    purpose: RunPurpose = NO_PURPOSE,
    linked: Mapping[str, LinkedEnvironment] | None = None,
) -> CompileResult:
    """Compile the named Environment of the bundle for `action`.

    `strict_inputs`: a run variable no template declares is an error (a run request), not a
    warning (`trellis template compile --var`); `unreadable`: see `validate.read_leniently`;
    `seal`: seals every sensitive value still in clear where it enters (sealing.py), e.g.
    `TenantKeys.seal`; without it values stay as they are (previews, `trellis template compile`);
    `linked`: the environments static resources of kind environment read (static.py).
    """
    problems = Problems()
    with gc_paused():
        bundle = Bundle.index(documents, problems, unreadable)
        info = RunInfo(
            action=action,
            tenant=tenant,
            run_id=run_id,
            requested_by=requested_by,
            environment_id=environment_id,
            email_relay_url=email_relay_url,
            trigger=trigger,
            require_inputs=require_inputs,
            strict_inputs=strict_inputs,
            seal=seal,
            purpose=purpose,
            linked=linked,
        )
        if why := purpose.problem(action):
            problems.error(None, (), f"run request: {why}")
            return _result(None, problems)
        found = bundle.environment(environment_name, problems)
        workflow = None
        if found is not None:
            environment, source = found
            workflow = compile_environment(
                bundle=bundle,
                environment=environment,
                environment_source=source,
                inputs=dict(inputs or {}),
                info=info,
                problems=problems,
            )
        return _result(workflow, problems)


def compile_template(
    documents: Sequence[SourceDocument | Document],
    template: str,
    action: Action = "deploy",
    unreadable: Unreadable = frozenset(),
) -> CompileResult:
    """Compile an EnvironmentTemplate without an Environment (validation: missing inputs are warnings)."""
    problems = Problems()
    bundle = Bundle.index(documents, problems, unreadable)
    env = Environment(
        api_version="trellis.dev/v1",
        metadata=Metadata(name=template),
        spec=EnvironmentSpec(template=VersionedRef(name=template)),
    )
    info = RunInfo(action=action, require_inputs=False)
    workflow = compile_environment(
        bundle=bundle, environment=env, environment_source=Source(), inputs={}, info=info, problems=problems
    )
    return _result(workflow, problems)


def _result(workflow: Workflow | None, problems: Problems) -> CompileResult:
    errors = tuple(dict.fromkeys(problems.errors))
    warnings = tuple(dict.fromkeys(problems.warnings))
    if errors:
        return CompileResult(None, warnings, errors)
    if workflow is not None and warnings:
        workflow = msgspec.structs.replace(workflow, warnings=tuple(str(w) for w in warnings))
    return CompileResult(workflow, warnings, ())


def compile_sources(
    sources: Sequence[SourceFile],
    environment_name: str,
    inputs: Mapping[str, str] | None = None,
    action: Action = "deploy",
    **kwargs: Any,
) -> CompileResult:
    """Compile a run request's bundle of files given as text.

    A document with read errors is read as far as it can be (`validate.read_leniently`) so that
    the rejection lists the compile errors of the rest of the bundle too, sorted.
    """
    problems = Problems()
    with gc_paused():
        budget = Budget()  # one for the whole request: every file and document
        raws = [raw for f in sources for raw in load_text(f.text, f.path, problems, budget=budget)]
        docs, unreadable = read_leniently(raws, problems)
    if not raws:
        if not problems.errors:
            where = ", ".join(f.path for f in sources) or "the run request"
            problems.error(None, (), f"the bundle has no documents ({where})", _EMPTY_HINT)
        return CompileResult(None, tuple(problems.warnings), tuple(problems.errors))
    result = compile_bundle(docs, environment_name, inputs, action, unreadable=unreadable, **kwargs)
    warnings = (*problems.warnings, *result.warnings)
    if problems.errors:
        return CompileResult(None, sorted_problems(warnings), sorted_problems([*problems.errors, *result.errors]))
    return CompileResult(result.workflow, warnings, result.errors)


_EMPTY_HINT = "a template bundle is YAML documents (files ending in .yaml or .yml) with apiVersion, kind and metadata"


def load_bundle(paths: Sequence[str]) -> tuple[list[SourceDocument], Problems]:
    """The documents of files and directories; a read error anywhere leaves no partial document."""
    problems = Problems()
    with gc_paused():
        raws = load_paths(paths, problems)
        docs = parse_documents(raws, problems)
    _no_documents(raws, paths, problems)
    return docs, problems


def read_bundle(paths: Sequence[str]) -> tuple[list[SourceDocument], Unreadable, Problems]:
    """For validation: every document as far as it can be read (`validate.read_leniently`)."""
    problems = Problems()
    with gc_paused():
        raws = load_paths(paths, problems)
        docs, unreadable = read_leniently(raws, problems)
    _no_documents(raws, paths, problems)
    return docs, unreadable, problems


def _no_documents(raws: Sequence[object], paths: Sequence[str], problems: Problems) -> None:
    if not raws and not problems.errors:
        problems.error(
            Source(paths[0] if len(paths) == 1 else ""), (), "no documents in " + ", ".join(paths), _EMPTY_HINT
        )


def sorted_problems(problems: Sequence[Problem]) -> tuple[Problem, ...]:
    """Problems once each, by file, line, column, path and message."""
    unique = dict.fromkeys(problems)
    return tuple(sorted(unique, key=lambda p: (p.file, p.line, p.column, p.path, p.message)))


def validate_bundle(paths: Sequence[str]) -> tuple[int, tuple[Problem, ...], tuple[Problem, ...]]:
    """`trellis template validate`: (documents read, errors, warnings) of read and compile
    checks together, sorted; a document with read errors still takes part in the later checks."""
    docs, unreadable, problems = read_bundle(paths)
    errors, warnings = validate_documents(docs, unreadable)
    return (
        len(docs),
        sorted_problems([*problems.errors, *errors]),
        sorted_problems([*problems.warnings, *warnings]),
    )


def validate_documents(
    docs: Sequence[SourceDocument], unreadable: Unreadable = frozenset()
) -> tuple[tuple[Problem, ...], tuple[Problem, ...]]:
    """Errors and warnings of a bundle: every Environment (and unused EnvironmentTemplate) compiled
    for deploy and destroy, inputs a run could still give treated as warnings."""
    errors: dict[Problem, None] = {}
    warnings: dict[Problem, None] = {}
    problems = Problems()
    bundle = Bundle.index(docs, problems, unreadable)
    for sd in docs:
        _check_strings(msgspec.to_builtins(sd.document), sd.source, (), problems)
    errors.update(dict.fromkeys(problems.errors))
    used: set[str] = set()
    action: Action
    for env, _ in bundle.all(Environment):
        used.add(env.spec.template.name)
        for action in ("deploy", "destroy"):
            result = compile_bundle(docs, env.metadata.name, {}, action, require_inputs=False, unreadable=unreadable)
            errors.update(dict.fromkeys(result.errors))
            warnings.update(dict.fromkeys(result.warnings))
    templates = bundle.names(EnvironmentTemplate)
    if templates and not used and not any(kind == "Environment" for kind, _ in unreadable):
        warnings[_no_environment(templates)] = None
    for name in templates:
        if name in used:
            continue
        for action in ("deploy", "destroy"):
            result = compile_template(docs, name, action, unreadable)
            errors.update(dict.fromkeys(result.errors))
            warnings.update(dict.fromkeys(result.warnings))
    return tuple(errors), tuple(warnings)


def _no_environment(templates: list[str]) -> Problem:
    return Problem(
        message="the bundle has no Environment: its EnvironmentTemplates were checked on their own",
        hint=f"`trellis run` needs a document with `kind: Environment` naming one of: {', '.join(templates)}",
        severity="warning",
    )


# `$(` then a name of the expression scope: meant as an expression, even with no `)$` after it
# (a `$(` with none is shell text to the renderer, so without this the string passes unchanged).
_OPENED = re.compile(r"(?<!\$)\$\(\s*(?:environment|variables|resource|context|run|tenant|trigger|approval)\b")


def _check_strings(value: Any, source: Source, path: Path, problems: Problems) -> None:
    """Expression syntax in every string, also of documents no environment uses."""
    if isinstance(value, str):
        err = expressions.check(value)
        if err is not None:
            problems.error(source, path, err.message, err.hint)
        elif (m := _OPENED.search(value)) is not None and expressions.END not in value[m.end() :]:
            problems.error(
                source,
                path,
                f"unclosed expression {value[m.start() : m.start() + 40]!r}: no )$ after its $(",
                "close it with )$, or write $$( for a shell $(",
            )
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_strings(item, source, (*path, k), problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, source, (*path, index), problems)


def sensitive_variables(
    sources: Sequence[SourceFile], environment_name: str, variables: Mapping[str, str]
) -> frozenset[str]:
    """Which of `variables` the bundle's templates declare sensitive for the named Environment
    (what a client seals before a run request leaves it). A bundle whose Environment cannot be
    resolved names all of them: the run is rejected anyway, and nothing goes out in clear."""
    problems = Problems()
    with gc_paused():
        budget = Budget()
        raws = [raw for f in sources for raw in load_text(f.text, f.path, problems, budget=budget)]
        docs, unreadable = read_leniently(raws, problems)
        bundle = Bundle.index(docs, problems, unreadable)
        found = bundle.environment(environment_name, problems)
        documents = resolve_documents(bundle, found[0], found[1], problems) if found is not None else None
    if documents is None:
        return frozenset(variables)
    return declared_sensitive(documents) & frozenset(variables)
