"""Hooks and custom tasks to activities: every hook type compiled to http, container, function or approval."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import get_args

from trellis_core.workflow import (
    Activity,
    ApprovalSpec,
    ContainerSpec,
    HttpSpec,
    RetryPolicy,
    RunWhen,
    SkipConfig,
)
from trellis_templates.documents import Hook, HookType
from trellis_templates.errors import Path
from trellis_templates.expressions import truthy
from trellis_templates.specs import (
    NO_RETRY,
    HookContext,
    Run,
    container_spec,
    driver_run,
    http_spec,
    resolve_driver,
)

HOOK_TYPES = frozenset(get_args(HookType))
DEFAULT_APPROVAL_BODY = json.dumps(
    {
        "text": "Approval needed: $(environment.name)$ $(run.action)$",
        "callbackUrl": "$(approval.callback_url)$",
    }
)


def hook_activity(
    ctx: HookContext,
    hook: Hook,
    path: Path,
    activity_id: str,
    *,
    stage: str,
    depends_on: tuple[str, ...],
    when: RunWhen = "success",
) -> Activity | None:
    """One hook (or custom task) as an activity; None when it has errors (already reported)."""
    run = _primitive(ctx, hook, path)
    if run is None:
        return None
    skip = None
    if hook.skip_config is not None:
        skip = _skip(ctx, hook, path)
    timeout = float(hook.timeout_seconds) if hook.timeout_seconds is not None else run.timeout
    retries = hook.retries if hook.retries else run.max_retries
    return Activity(
        id=activity_id,
        kind=run.kind,
        spec=run.spec,
        resource=ctx.resource,
        stage=stage,
        depends_on=depends_on,
        when=when,
        on_failure="continue" if hook.on_failure == "continue" else "fail",
        agents=tuple(agent.name for agent in hook.agents) or ctx.agents,
        workspace=ctx.resource,
        timeout_seconds=timeout,
        retry=RetryPolicy(max_attempts=retries + 1) if retries else NO_RETRY,
        execute_once=hook.execute_once,
        skip=skip,
        inputs={**run.inputs, **ctx.inputs} if run.inputs else ctx.inputs,
        sensitive=tuple(sorted({*ctx.sensitive, *run.sensitive})) if run.sensitive else ctx.sensitive,
    )


def _skip(ctx: HookContext, hook: Hook, path: Path) -> SkipConfig | None:
    """A condition that only reads compile-time names is decided now (`true` or dropped)."""
    assert hook.skip_config is not None
    condition = hook.skip_config.condition
    cpath = (*path, "skipConfig", "condition")
    if condition and not ctx.renderer.late(condition):
        value = ctx.renderer.value(condition, ctx.source, cpath)
        condition = "true" if truthy(value) else ""
    else:
        condition = ctx.renderer.raw(condition, ctx.source, cpath)
    if not condition and not hook.skip_config.skip_on_destroy:
        return None
    return SkipConfig(condition=condition, skip_on_destroy=hook.skip_config.skip_on_destroy)


def _primitive(ctx: HookContext, hook: Hook, path: Path) -> Run | None:
    opts, opath = hook.options, (*path, "options")
    renderer, src = ctx.renderer, ctx.source
    kind = hook.type
    if kind not in HOOK_TYPES:  # read leniently from a document with errors: already reported
        return None
    if kind in ("driver", "workflowHandler"):
        return _driver_hook(ctx, hook, path)
    if kind == "http":
        if opts.http is None:
            return _missing(ctx, path, kind, "options.http")
        return Run("http", http_spec(renderer, over=opts.http, over_source=src, over_path=(*opath, "http")))
    if kind == "container":
        if opts.container is None:
            return _missing(ctx, path, kind, "options.container")
        spec = container_spec(ctx, over=opts.container, over_source=src, over_path=(*opath, "container"))
        return Run("container", spec)
    if kind == "script":
        if opts.script is None:
            return _missing(ctx, path, kind, "options.script")
        spath = (*opath, "script")
        env = dict(ctx.env) | renderer.texts(opts.script.env_vars, src, (*spath, "envVars"))
        script = renderer.text(opts.script.script, src, (*spath, "script"))
        image = renderer.text(opts.script.image, src, (*spath, "image"))
        return Run("container", ContainerSpec(image=image, command=("sh", "-c", script), env=env, files=ctx.files))
    if kind == "notification":
        return _notification(ctx, hook, path)
    return _approval(ctx, hook, path)


def _missing(ctx: HookContext, path: Path, kind: str, what: str) -> Run | None:
    ctx.problems.error(ctx.source, path, f"a hook of type {kind} needs {what}")
    return None


def _driver_hook(ctx: HookContext, hook: Hook, path: Path) -> Run | None:
    ref, key = (hook.driver, "driver") if hook.driver is not None else (hook.workflow_handler, "workflowHandler")
    if ref is None:
        return _missing(ctx, path, hook.type, "driver: {name: …} (or workflowHandler: {name: …})")
    resolved = resolve_driver(ctx, ref, (*path, key))
    if resolved is None:
        return None
    return driver_run(ctx, resolved, hook.options.container, hook.options.http, (*path, "options"))


def _notification(ctx: HookContext, hook: Hook, path: Path) -> Run | None:
    note, npath = hook.options.notification, (*path, "options", "notification")
    renderer, src = ctx.renderer, ctx.source
    if note is None:
        return _missing(ctx, path, "notification", "options.notification")
    if note.type == "webhook":
        if note.webhook is None:
            return _missing(ctx, path, "notification", "options.notification.webhook")
        w, wpath = note.webhook, (*npath, "webhook")
        return Run(
            "http",
            HttpSpec(
                url=renderer.text(w.endpoint, src, (*wpath, "endpoint")),
                method=w.method.upper(),
                headers=renderer.texts(w.headers, src, (*wpath, "headers")) or {"Content-Type": "application/json"},
                body=renderer.text(w.body, src, (*wpath, "body")),
            ),
        )
    if note.email is None:
        return _missing(ctx, path, "notification", "options.notification.email")
    e, epath = note.email, (*npath, "email")
    if not ctx.email_relay_url:
        ctx.problems.warn(
            src,
            epath,
            "email goes through a webhook relay, and none is configured",
            "set TRELLIS_EMAIL_RELAY_URL for the compiler",
        )
    body = {
        "sender": renderer.text(e.sender, src, (*epath, "sender")),
        "receivers": [
            renderer.text(receiver, src, (*epath, "receivers", index)) for index, receiver in enumerate(e.receivers)
        ],
        "subject": renderer.text(e.subject, src, (*epath, "subject")),
        "body": renderer.text(e.body, src, (*epath, "body")),
    }
    return Run(
        "http",
        HttpSpec(
            url=ctx.email_relay_url,
            headers={"Content-Type": "application/json"},
            body=json.dumps(body, sort_keys=True),
        ),
    )


def _approval(ctx: HookContext, hook: Hook, path: Path) -> Run | None:
    opts, apath, renderer, src = hook.options.approval, (*path, "options", "approval"), ctx.renderer, ctx.source
    if opts is None:
        return _missing(ctx, path, "approval", "options.approval")
    approvers = tuple(opts.internal.emails) if opts.internal else ()
    notify = None
    if opts.type == "webhook":
        if opts.webhook is None:
            return _missing(ctx, path, "approval", "options.approval.webhook")
        w, wpath = opts.webhook, (*apath, "webhook")
        notify = HttpSpec(
            url=renderer.text(w.endpoint, src, (*wpath, "endpoint")),
            method=w.method.upper(),
            headers=renderer.texts(w.headers, src, (*wpath, "headers")) or {"Content-Type": "application/json"},
            body=renderer.text(w.body or DEFAULT_APPROVAL_BODY, src, (*wpath, "body")),
        )
    return Run("approval", ApprovalSpec(notify=notify, approvers=approvers))


def env_for(variables: Mapping[str, str], *, tf: bool) -> dict[str, str]:
    """TRELLIS_VAR_x (and TF_VAR_x for OpenTofu/Terraform stages) for each variable."""
    env = {f"TRELLIS_VAR_{k}": v for k, v in variables.items()}
    if tf:
        env = {f"TF_VAR_{k}": v for k, v in variables.items()} | env
    return env


__all__ = ["HookContext", "driver_run", "env_for", "hook_activity", "resolve_driver"]
