"""Environments that read each other's outputs through static resources of kind environment
(docs/static-resources.md): the links the projection records, the outputs the compiler reads,
and the refusal of a destroy while another environment depends on the one destroyed."""

from __future__ import annotations

from typing import Any

import msgspec

from trellis_store.api import EnvironmentLink, LinkedOutputs, LinkedOutputsGet, LinkedState, StoreError
from trellis_store.context import StoreContext, error
from trellis_store.outputs import seal_resources

_outputs = msgspec.json.Decoder(dict[str, dict[str, Any]])
MAX_LINKED = 64  # environments one template may read

# After ENV_FINISHED (same batch, same transaction): the run that is now its environment's deploy
# record (deploy_run_id: the latest successful ordinary deploy or destroy) sets the links. Links
# of an older run go; a deploy adds its own (runs.workflow.static), a destroy none. Idempotent,
# and a run whose workflow is not projected yet adds its links when its run.compiled is.
LINKS_DROP = """
DELETE FROM environment_links AS l
USING runs AS r, environments AS e
WHERE r.tenant = $1 AND r.run_id = $2 AND r.status = 'succeeded' AND r.purpose IN ('', 'force-destroy')
  AND e.tenant = r.tenant AND e.name = r.environment AND e.deploy_run_id = r.run_id
  AND l.tenant = r.tenant AND l.environment = r.environment AND l.run_id <> r.run_id
"""
LINKS_ADD = """
INSERT INTO environment_links (tenant, environment, depends_on_environment, resource, run_id)
SELECT r.tenant, r.environment, s.value->>'environment', s.key, r.run_id
FROM runs AS r
JOIN environments AS e ON e.tenant = r.tenant AND e.name = r.environment AND e.deploy_run_id = r.run_id
CROSS JOIN LATERAL jsonb_each(COALESCE(r.workflow->'static', '{}'::jsonb)) AS s
WHERE r.tenant = $1 AND r.run_id = $2 AND r.status = 'succeeded' AND r.purpose = '' AND r.action = 'deploy'
  AND s.value->>'kind' = 'environment' AND COALESCE(s.value->>'environment', '') <> ''
ON CONFLICT (tenant, environment, resource) DO UPDATE SET
    depends_on_environment = excluded.depends_on_environment, run_id = excluded.run_id
"""


async def dependents(conn: Any, tenant: str, environment: str) -> tuple[EnvironmentLink, ...]:
    """The environments reading `environment`'s outputs, by name."""
    rows = await conn.fetch(
        "SELECT environment, resource FROM environment_links WHERE tenant = $1 AND depends_on_environment = $2 "
        "ORDER BY environment, resource",
        tenant,
        environment,
    )
    return tuple(EnvironmentLink(environment=r["environment"], resource=r["resource"]) for r in rows)


async def depends_on(conn: Any, tenant: str, environment: str) -> tuple[EnvironmentLink, ...]:
    """The environments `environment` reads, by name."""
    rows = await conn.fetch(
        "SELECT depends_on_environment, resource FROM environment_links WHERE tenant = $1 AND environment = $2 "
        "ORDER BY depends_on_environment, resource",
        tenant,
        environment,
    )
    return tuple(EnvironmentLink(environment=r["depends_on_environment"], resource=r["resource"]) for r in rows)


def destroy_refusal(environment: str, readers: tuple[EnvironmentLink, ...]) -> str:
    """Why a destroy of `environment` is refused while `readers` read it ("" when none do)."""
    if not readers:
        return ""
    names = ", ".join(dict.fromkeys(link.environment for link in readers))
    return (
        f"environment {environment!r} cannot be destroyed: environment(s) {names} read its outputs through "
        "static resources of kind environment (force does not override this); destroy them first"
    )


async def refuse_destroy(conn: Any, tenant: str, environment: str) -> StoreError | None:
    """A `conflict` naming the dependents when `environment` has any, else None."""
    why = destroy_refusal(environment, await dependents(conn, tenant, environment))
    return error("conflict", why, "environment") if why else None


async def linked_outputs(ctx: StoreContext, req: LinkedOutputsGet) -> LinkedOutputs | StoreError:
    """The outputs of the environments a run reads: a consistent read, like deploy.record."""
    if len(req.environments) > MAX_LINKED:
        return error(
            "invalid", f"at most {MAX_LINKED} environments at once, got {len(req.environments)}", "environments"
        )
    last = await ctx.projection.events_last_seq()
    if not await ctx.projection.wait_projected(last, ctx.barrier_timeout):
        return error(
            "unavailable",
            f"the store's projection has not caught up with event {last} within {ctx.barrier_timeout:g}s",
        )
    rows = await ctx.pool.fetch(
        "SELECT name, deployed, outputs::text AS outputs FROM environments "
        "WHERE tenant = $1 AND name = ANY($2::text[])",
        req.tenant,
        list(req.environments),
    )
    seal = ctx.keys(req.tenant).seal
    found = {
        r["name"]: LinkedState(deployed=True, outputs=seal_resources(_outputs.decode(r["outputs"]), seal))
        if r["deployed"]
        else LinkedState(deployed=False)
        for r in rows
    }
    return LinkedOutputs(environments=found)
