"""Phase 1 of a compilation: the Environment, its EnvironmentTemplate and their contexts, found and checked;
and what the run request adds (`RunInfo`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trellis_core.workflow import NO_PURPOSE, Action, RunPurpose
from trellis_templates.bundle import Bundle
from trellis_templates.checks import check_schedules
from trellis_templates.contexts import Attached, attach
from trellis_templates.documents import ContextRef, Environment, EnvironmentTemplate
from trellis_templates.errors import Path, Problems, Source
from trellis_templates.schedules import check_environment_optouts


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkedEnvironment:
    """Another environment of the tenant as the state store knew it (static-resources.md)."""

    exists: bool
    deployed: bool = False
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # resource -> output -> entry


@dataclass(frozen=True, slots=True, kw_only=True)
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
    seal: Callable[[str], str] | None = None  # seals a sensitive value in clear (sealing.py); None: kept
    purpose: RunPurpose = NO_PURPOSE  # a day-2 action, a force-destroy or a drift check
    # The environments `kind: environment` static resources read, by name (a name missing: no
    # such environment); None: not asked (compiled without a state store, outputs unknown).
    linked: Mapping[str, LinkedEnvironment] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Documents:
    """Phase 1: the Environment, the EnvironmentTemplate it names, and the contexts both attach."""

    bundle: Bundle
    environment: Environment
    environment_source: Source
    template: EnvironmentTemplate
    template_source: Source
    template_contexts: tuple[Attached, ...]
    environment_contexts: tuple[Attached, ...]

    @property
    def contexts(self) -> tuple[Attached, ...]:
        """The EnvironmentTemplate's contexts, then the Environment's."""
        return self.template_contexts + self.environment_contexts


def attach_contexts(
    bundle: Bundle, refs: Sequence[ContextRef], source: Source | None, problems: Problems
) -> tuple[Attached, ...]:
    """The contexts a document's `spec.contexts` list attaches."""
    path: Path = ("spec", "contexts")
    return tuple(attach(bundle, refs, source, path, problems))


def resolve_documents(
    bundle: Bundle, environment: Environment, environment_source: Source, problems: Problems
) -> Documents | None:
    """Find the environment's template and attach both documents' contexts; None when it is missing."""
    ref = environment.spec.template
    found = bundle.find(
        EnvironmentTemplate,
        ref.name,
        ref.version,
        problems=problems,
        where=(environment_source, ("spec", "template", "name")),
    )
    if found is None:
        return None
    template, template_source = found
    check_schedules(template.spec.schedules, template_source, problems)
    check_schedules(environment.spec.schedules, environment_source, problems)
    check_environment_optouts(template, environment, environment_source, problems)
    return Documents(
        bundle=bundle,
        environment=environment,
        environment_source=environment_source,
        template=template,
        template_source=template_source,
        template_contexts=attach_contexts(bundle, template.spec.contexts, template_source, problems),
        environment_contexts=attach_contexts(bundle, environment.spec.contexts, environment_source, problems),
    )
