"""Hooks, tasks and drivers to the three primitives: http, container and function (plus approval)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trellis_core.workflow import (
    Action,
    Activity,
    ActivityKind,
    ActivitySpec,
    ApprovalSpec,
    ContainerSpec,
    FunctionSpec,
    HttpSpec,
    RetryPolicy,
    RunWhen,
    SkipConfig,
)
from trellis_templates import expressions as ex
from trellis_templates.bundle import Bundle
from trellis_templates.documents import ContainerOptions, Driver, DriverConfig, Hook, HttpOptions
from trellis_templates.errors import Path, Problems, Source
from trellis_templates.rendering import Renderer, truthy

_NO_RETRY = Activity(id="", kind="http", spec=HttpSpec(url="")).retry  # the default: omitted in JSON
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DEFAULT_APPROVAL_BODY = json.dumps(
    {
        "text": "Approval needed: $(environment.name)$ $(run.action)$",
        "callbackUrl": "$(approval.callback_url)$",
    }
)


@dataclass(slots=True)
class HookContext:
    """What a hook needs from where it is attached: a resource, or the environment."""

    bundle: Bundle
    problems: Problems
    renderer: Renderer
    source: Source | None
    resource: str
    agents: tuple[str, ...]
    inputs: dict[str, Any]
    sensitive: tuple[str, ...]
    env: dict[str, str]
    action: Action
    email_relay_url: str = ""
    files: dict[str, str] = field(default_factory=dict)  # the contexts' files: path -> base64


@dataclass(frozen=True, slots=True)
class _Run:
    kind: ActivityKind
    spec: ActivitySpec
    timeout: float | None = None
    max_retries: int = 0


def parse_duration(text: str) -> float | None:
    """`15s`, `1h30m`, `90` (seconds) -> seconds; None when it is not a duration."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def _limit(value: str | int | None, problems: Problems, source: Source | None, path: Path) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip().removesuffix("m").removesuffix("Mi"))
    except ValueError:
        problems.error(source, path, f"{value!r} is not a whole number")
        return None


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
        agents=tuple(a.name for a in hook.agents) or ctx.agents,
        workspace=ctx.resource,
        timeout_seconds=timeout,
        retry=RetryPolicy(max_attempts=retries + 1) if retries else _NO_RETRY,
        execute_once=hook.execute_once,
        skip=skip,
        inputs=ctx.inputs,
        sensitive=ctx.sensitive,
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


def _primitive(ctx: HookContext, hook: Hook, path: Path) -> _Run | None:
    opts, opath = hook.options, (*path, "options")
    r, src = ctx.renderer, ctx.source
    kind = hook.type
    if kind in ("driver", "workflowHandler"):
        return _driver_hook(ctx, hook, path)
    if kind == "http":
        if opts.http is None:
            return _missing(ctx, path, kind, "options.http")
        return _Run("http", _http(r, None, (), opts.http, src, (*opath, "http")))
    if kind == "container":
        if opts.container is None:
            return _missing(ctx, path, kind, "options.container")
        return _Run("container", _container(ctx, None, None, (), opts.container, src, (*opath, "container")))
    if kind == "script":
        if opts.script is None:
            return _missing(ctx, path, kind, "options.script")
        spath = (*opath, "script")
        env = dict(ctx.env) | r.texts(opts.script.env_vars, src, (*spath, "envVars"))
        script = r.text(opts.script.script, src, (*spath, "script"))
        image = r.text(opts.script.image, src, (*spath, "image"))
        return _Run(
            "container", ContainerSpec(image=image, command=("sh", "-c", script), env=env, files=ctx.files)
        )
    if kind == "notification":
        return _notification(ctx, hook, path)
    return _approval(ctx, hook, path)


def _missing(ctx: HookContext, path: Path, kind: str, what: str) -> _Run | None:
    ctx.problems.error(ctx.source, path, f"a hook of type {kind} needs {what}")
    return None


def _http(
    r: Renderer,
    bsrc: Source | None,
    bpath: Path,
    over: HttpOptions,
    osrc: Source | None,
    opath: Path,
    base: HttpOptions | None = None,
) -> HttpSpec:
    def pick(name: str) -> tuple[Any, Source | None, Path]:
        value = getattr(over, name)
        if value is not None or base is None:
            return value, osrc, (*opath, _camel(name))
        return getattr(base, name), bsrc, (*bpath, _camel(name))

    endpoint, esrc, epath = pick("endpoint")
    if not endpoint:
        r.problems.error(esrc, epath, "an http call needs an endpoint")
    method, _, _ = pick("method")
    headers, hsrc, hpath = pick("headers")
    body, bs, bp = pick("body")
    cond, cs, cp = pick("success_condition")
    verify, _, _ = pick("verify_tls")
    return HttpSpec(
        url=r.text(endpoint or "", esrc, epath),
        method=(method or "POST").upper(),
        headers=r.texts(headers, hsrc, hpath),
        body=r.text(body or "", bs, bp),
        verify_tls=True if verify is None else verify,
        success_condition=r.raw(cond or "", cs, cp),
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _container(
    ctx: HookContext,
    base: ContainerOptions | None,
    bsrc: Source | None,
    bpath: Path,
    over: ContainerOptions | None,
    osrc: Source | None,
    opath: Path,
) -> ContainerSpec:
    """A container spec; each field of `over` that is set replaces the one of `base`."""
    r = ctx.renderer

    def pick(name: str) -> tuple[Any, Source | None, Path]:
        value = getattr(over, name) if over is not None else None
        if value is not None or base is None:
            return value, osrc, (*opath, _camel(name))
        return getattr(base, name), bsrc, (*bpath, _camel(name))

    image, s, p = pick("image")
    image = r.text(image or "", s, p)
    commands, cs, cp = pick("commands")
    args, as_, ap = pick("arguments")
    env, es, ep = pick("env_vars")
    files, fs, fp = pick("files")
    wd, ws, wp = pick("working_dir_path")
    cpu, cpus, cpup = pick("cpu_limit_milli")
    mem, mems, memp = pick("memory_limit_mb")
    cond, cos, cop = pick("success_condition")
    return ContainerSpec(
        image=image,
        command=tuple(r.text(c, cs, (*cp, i)) for i, c in enumerate(commands or ())),
        args=tuple(r.text(a, as_, (*ap, i)) for i, a in enumerate(args or ())),
        env=dict(ctx.env) | r.texts(env, es, ep),
        files=dict(ctx.files) | r.texts(files, fs, fp),
        working_dir=r.text(wd or "", ws, wp),
        cpu_limit_milli=_limit(cpu, ctx.problems, cpus, cpup),
        memory_limit_mb=_limit(mem, ctx.problems, mems, memp),
        success_condition=r.raw(cond or "", cos, cop),
    )


def _driver_hook(ctx: HookContext, hook: Hook, path: Path) -> _Run | None:
    ref = hook.driver
    if ref is None:
        return _missing(ctx, path, hook.type, "driver: {name: …}")
    resolved = resolve_driver(ctx, ref.name, ref.version, ref.data.config if ref.data else None, path)
    if resolved is None:
        return None
    config, dsrc, dpath = resolved
    return driver_run(ctx, config, dsrc, dpath, hook.options.container, hook.options.http, (*path, "options"))


def resolve_driver(
    ctx: HookContext, name: str, version: str, inline: DriverConfig | None, path: Path
) -> tuple[DriverConfig, Source | None, Path] | None:
    if inline is not None:
        return inline, ctx.source, (*path, "driver", "data", "config")
    if not name:
        ctx.problems.error(ctx.source, (*path, "driver"), "a driver reference needs a name or inline data")
        return None
    found = ctx.bundle.find(Driver, name, version, ctx.problems, (ctx.source, (*path, "driver", "name")))
    if found is None:
        return None
    driver, dsrc = found
    return driver.spec.config, dsrc, ("spec", "config")


def driver_run(
    ctx: HookContext,
    config: DriverConfig,
    dsrc: Source | None,
    dpath: Path,
    container: ContainerOptions | None,
    http: HttpOptions | None,
    opath: Path,
) -> _Run | None:
    timeout = float(config.timeout_seconds) if config.timeout_seconds is not None else None
    retries = config.max_retry_count
    if config.type == "container":
        spec = _container(
            ctx, config.container, dsrc, (*dpath, "container"), container, ctx.source, (*opath, "container")
        )
        if not spec.success_condition and config.success_condition:
            spec = _with_condition(
                spec, ctx.renderer.raw(config.success_condition, dsrc, (*dpath, "successCondition"))
            )
        return _Run("container", spec, timeout, retries)
    if config.type == "http":
        base = config.http or HttpOptions()
        spec_http = _http(
            ctx.renderer, dsrc, (*dpath, "http"), http or HttpOptions(), ctx.source, (*opath, "http"), base
        )
        return _Run("http", spec_http, timeout, retries)
    return _function(ctx, config, dsrc, dpath, timeout, retries)


def _with_condition(spec: ContainerSpec, condition: str) -> ContainerSpec:
    import msgspec

    return msgspec.structs.replace(spec, success_condition=condition)


def _function(
    ctx: HookContext,
    config: DriverConfig,
    dsrc: Source | None,
    dpath: Path,
    timeout: float | None,
    retries: int,
) -> _Run | None:
    fn, fpath, r = config.function, (*dpath, "function"), ctx.renderer
    if fn is None or not (fn.image or fn.endpoint):
        src_only = fn is not None and fn.source is not None
        msg = (
            "a function built from source is not supported: give an image or an endpoint"
            if src_only
            else "a function driver needs function.image or function.endpoint"
        )
        ctx.problems.error(dsrc, fpath, msg)
        return None
    polling = config.polling_config
    repeat, until = 15.0, 3600.0
    if polling is not None:
        ppath = (*dpath, "pollingConfig")
        for field_name in ("repeat", "until"):
            seconds = parse_duration(getattr(polling, field_name))
            if seconds is None:
                text = getattr(polling, field_name)
                ctx.problems.error(dsrc, (*ppath, field_name), f"{text!r} is not a duration", "e.g. 15s, 1h")
            elif field_name == "repeat":
                repeat = seconds
            else:
                until = seconds
    spec = FunctionSpec(
        image=r.text(fn.image, dsrc, (*fpath, "image")),
        endpoint=r.text(fn.endpoint, dsrc, (*fpath, "endpoint")),
        repeat_seconds=repeat,
        until_seconds=until,
        invocation_timeout_seconds=timeout if timeout is not None else 300.0,
        env=dict(ctx.env) | r.texts(fn.env_vars, dsrc, (*fpath, "envVars")),
        cpu_limit_milli=_limit(fn.cpu_limit_milli, ctx.problems, dsrc, (*fpath, "cpuLimitMilli")),
        memory_limit_mb=_limit(fn.memory_limit_mb, ctx.problems, dsrc, (*fpath, "memoryLimitMb")),
    )
    return _Run("function", spec, until, retries)


def _notification(ctx: HookContext, hook: Hook, path: Path) -> _Run | None:
    note, npath = hook.options.notification, (*path, "options", "notification")
    r, src = ctx.renderer, ctx.source
    if note is None:
        return _missing(ctx, path, "notification", "options.notification")
    if note.type == "webhook":
        if note.webhook is None:
            return _missing(ctx, path, "notification", "options.notification.webhook")
        w, wpath = note.webhook, (*npath, "webhook")
        return _Run(
            "http",
            HttpSpec(
                url=r.text(w.endpoint, src, (*wpath, "endpoint")),
                method=w.method.upper(),
                headers=r.texts(w.headers, src, (*wpath, "headers")) or {"Content-Type": "application/json"},
                body=r.text(w.body, src, (*wpath, "body")),
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
        "sender": r.text(e.sender, src, (*epath, "sender")),
        "receivers": [r.text(x, src, (*epath, "receivers", i)) for i, x in enumerate(e.receivers)],
        "subject": r.text(e.subject, src, (*epath, "subject")),
        "body": r.text(e.body, src, (*epath, "body")),
    }
    return _Run(
        "http",
        HttpSpec(
            url=ctx.email_relay_url,
            headers={"Content-Type": "application/json"},
            body=json.dumps(body, sort_keys=True),
        ),
    )


def _approval(ctx: HookContext, hook: Hook, path: Path) -> _Run | None:
    opts, apath, r, src = hook.options.approval, (*path, "options", "approval"), ctx.renderer, ctx.source
    if opts is None:
        return _missing(ctx, path, "approval", "options.approval")
    approvers = tuple(opts.internal.emails) if opts.internal else ()
    notify = None
    if opts.type == "webhook":
        if opts.webhook is None:
            return _missing(ctx, path, "approval", "options.approval.webhook")
        w, wpath = opts.webhook, (*apath, "webhook")
        notify = HttpSpec(
            url=r.text(w.endpoint, src, (*wpath, "endpoint")),
            method=w.method.upper(),
            headers=r.texts(w.headers, src, (*wpath, "headers")) or {"Content-Type": "application/json"},
            body=r.text(w.body or DEFAULT_APPROVAL_BODY, src, (*wpath, "body")),
        )
    return _Run("approval", ApprovalSpec(notify=notify, approvers=approvers))


def env_for(variables: Mapping[str, str], *, tf: bool) -> dict[str, str]:
    """TRELLIS_VAR_x (and TF_VAR_x for OpenTofu/Terraform stages) for each variable."""
    env = {f"TRELLIS_VAR_{k}": v for k, v in variables.items()}
    if tf:
        env = {f"TF_VAR_{k}": v for k, v in variables.items()} | env
    return env


__all__ = ["HookContext", "driver_run", "env_for", "ex", "hook_activity", "parse_duration", "resolve_driver"]
