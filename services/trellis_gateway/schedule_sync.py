"""The schedule loop's first step: environments whose revision the store has not seen get their
effective schedules (template's and Environment's, opt-outs applied) read from their published
bundle and written to the store, armed at the next slot after now."""

from __future__ import annotations

from datetime import datetime

from trellis_core.events import Problem
from trellis_core.logs import get_logger
from trellis_gateway.context import Gateway
from trellis_gateway.launch import run_sources
from trellis_store.api import (
    Environment,
    EnvironmentGet,
    Ok,
    ScheduleStale,
    ScheduleSync,
    StaleEnvironment,
    StaleEnvironments,
    StoreError,
    SyncedSchedule,
    TemplateBundle,
    TemplateBundleGet,
)
from trellis_templates.bundle import Bundle
from trellis_templates.compiler import sorted_problems
from trellis_templates.documents import EnvironmentTemplate
from trellis_templates.errors import Problems
from trellis_templates.loader import load_text
from trellis_templates.schedules import EffectiveSchedule, effective_schedules, next_due
from trellis_templates.validate import read_leniently

log = get_logger("gateway.schedules")


def environment_schedules(
    env: Environment, bundle: TemplateBundle
) -> tuple[tuple[EffectiveSchedule, ...], tuple[Problem, ...]]:
    """The schedules environment `env` runs, from its bundle (its Environment document there, or
    one made from the stored environment), and the problems of those that cannot run."""
    problems = Problems()
    raws = [raw for f in run_sources(env, bundle) for raw in load_text(f.text, f.path, problems)]
    docs, unreadable = read_leniently(raws, problems)
    index = Bundle.index(docs, problems, unreadable)
    found = index.environment(env.name, problems)
    if found is None:
        return (), tuple(sorted_problems(problems.errors))
    environment, environment_source = found
    ref = environment.spec.template
    template = index.find(
        EnvironmentTemplate,
        ref.name,
        ref.version,
        problems=problems,
        where=(environment_source, ("spec", "template", "name")),
    )
    if template is None:
        return (), tuple(sorted_problems(problems.errors))
    schedules = effective_schedules(
        template[0],
        environment,
        problems,
        template_source=template[1],
        environment_source=environment_source,
    )
    return schedules, tuple(sorted_problems(problems.errors))


def key_of(tenant: str, environment: str) -> str:
    """What a staggered schedule's offset is derived from."""
    return f"{tenant}/{environment}"


async def sync_stale(gateway: Gateway, now: datetime, *, limit: int = 100) -> int:
    """Sync every environment whose revision the store has not synced; how many were."""
    stale = await gateway.store.ask(ScheduleStale(limit=limit), StaleEnvironments)
    if isinstance(stale, StoreError):  # the store starting (with the dev stack) is not worth a warning
        (log.info if stale.code == "unavailable" else log.warning)("schedule_stale_failed", error=stale.message)
        return 0
    synced = 0
    for item in stale.environments:
        synced += await sync_environment(gateway, item, now)
    return synced


async def sync_environment(gateway: Gateway, item: StaleEnvironment, now: datetime) -> int:
    env = await gateway.store.ask(EnvironmentGet(tenant=item.tenant, name=item.name), Environment)
    if isinstance(env, StoreError):
        log.warning("schedule_sync_failed", tenant=item.tenant, environment=item.name, error=env.message)
        return 0
    bundle = await gateway.store.ask(
        TemplateBundleGet(tenant=item.tenant, name=env.template.name, version=env.template.version), TemplateBundle
    )
    if isinstance(bundle, StoreError) and bundle.code != "not_found":  # the store away: try at the next tick
        log.warning("schedule_sync_failed", tenant=item.tenant, environment=item.name, error=bundle.message)
        return 0
    if isinstance(bundle, StoreError):  # an environment a bus run made (`trellis run`): no published template
        schedules: tuple[EffectiveSchedule, ...] = ()
        problems: tuple[Problem, ...] = (Problem(message=bundle.message, path="template"),)
        log.info("schedules_without_template", tenant=item.tenant, environment=item.name, error=bundle.message)
    else:
        schedules, problems = environment_schedules(env, bundle)
        if problems:
            log.warning(
                "schedule_problems", tenant=item.tenant, environment=item.name, problems=[str(p) for p in problems]
            )
    key = key_of(item.tenant, item.name)
    request = ScheduleSync(
        tenant=item.tenant,
        environment=item.name,
        revision=int(env.etag.strip('"')),
        schedules=tuple(SyncedSchedule(schedule=s, next_due_at=next_due(s, now, key=key)) for s in schedules),
        problems=problems,
        now=now,
    )
    answer = await gateway.store.ask(request, Ok)
    if isinstance(answer, StoreError):
        log.warning("schedule_sync_failed", tenant=item.tenant, environment=item.name, error=answer.message)
        return 0
    log.info("schedules_synced", tenant=item.tenant, environment=item.name, schedules=[s.name for s in schedules])
    return 1
