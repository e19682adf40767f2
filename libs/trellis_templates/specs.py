"""Executor specs from template options: containers, http calls, drivers and functions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from trellis_core.workflow import (
    Action,
    Activity,
    ActivityKind,
    ActivitySpec,
    ContainerSpec,
    FunctionSpec,
    HttpSpec,
)
from trellis_templates.bundle import Bundle
from trellis_templates.contexts import Attached, attach
from trellis_templates.documents import ContainerOptions, Driver, DriverConfig, DriverRef, HttpOptions
from trellis_templates.errors import Path, Problems, Source
from trellis_templates.rendering import Renderer

NO_RETRY = Activity(id="", kind="http", spec=HttpSpec(url="")).retry  # the default: omitted in JSON
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_STATUS_LINE = re.compile(r"\s*([1-5]\d\d)(?:\s+[A-Za-z][A-Za-z' -]*)?\s*")  # Rafay's "200 OK"


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
class Run:
    kind: ActivityKind
    spec: ActivitySpec
    timeout: float | None = None
    max_retries: int = 0
    inputs: dict[str, Any] = field(default_factory=dict)  # a driver's input-context variables
    sensitive: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResolvedDriver:
    """A driver's config, where it is written, and its input contexts."""

    config: DriverConfig
    source: Source | None
    path: Path
    inputs: list[Attached]


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


def limit(value: str | int | None, problems: Problems, source: Source | None, path: Path) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip().removesuffix("m").removesuffix("Mi"))
    except ValueError:
        problems.error(source, path, f"{value!r} is not a whole number")
        return None


def http_spec(
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
        success_condition=http_condition(r, cond or "", cs, cp),
    )


def http_condition(r: Renderer, condition: str, source: Source | None, path: Path) -> str:
    """An http call's successCondition; a status line as Rafay writes it ("200 OK", "201
    Created") would fail every call as an expression: it is read as `response.status == 200`."""
    m = _STATUS_LINE.fullmatch(condition)
    if m is None:
        return r.raw(condition, source, path)
    expression = f"$(response.status == {m[1]})$"
    r.problems.warn(
        source,
        path,
        f"successCondition {condition!r} is read as {expression}",
        f'write successCondition: "{expression}"',
    )
    return expression


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def container_spec(
    ctx: HookContext,
    base: ContainerOptions | None,
    bsrc: Source | None,
    bpath: Path,
    over: ContainerOptions | None,
    osrc: Source | None,
    opath: Path,
    *,
    extra_env: dict[str, str] | None = None,
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
        env=dict(ctx.env) | (extra_env or {}) | r.texts(env, es, ep),
        files=dict(ctx.files) | r.texts(files, fs, fp),
        working_dir=r.text(wd or "", ws, wp),
        cpu_limit_milli=limit(cpu, ctx.problems, cpus, cpup),
        memory_limit_mb=limit(mem, ctx.problems, mems, memp),
        success_condition=r.raw(cond or "", cos, cop),
    )


def resolve_driver(ctx: HookContext, ref: DriverRef, path: Path) -> ResolvedDriver | None:
    """The driver a reference names (or holds inline); `path` is the reference (`…driver`)."""
    if ref.data is not None:
        data_path = (*path, "data")
        inputs = attach(ctx.bundle, ref.data.inputs, ctx.source, (*data_path, "inputs"), ctx.problems)
        return ResolvedDriver(ref.data.config, ctx.source, (*data_path, "config"), inputs)
    if not ref.name:
        ctx.problems.error(ctx.source, path, "a driver reference needs a name or inline data")
        return None
    found = ctx.bundle.find(Driver, ref.name, ref.version, ctx.problems, (ctx.source, (*path, "name")))
    if found is None:
        return None
    driver, dsrc = found
    inputs = attach(ctx.bundle, driver.spec.inputs, dsrc, ("spec", "inputs"), ctx.problems)
    return ResolvedDriver(driver.spec.config, dsrc, ("spec", "config"), inputs)


def input_contexts(ctx: HookContext, inputs: list[Attached]) -> tuple[dict[str, str], dict[str, Any], set[str]]:
    """A driver's input contexts: their envs, their variables (as inputs), and which are secret."""
    env: dict[str, str] = {}
    values: dict[str, Any] = {}
    secret: set[str] = set()
    for c in inputs:
        for j, e in enumerate(c.spec.envs):
            env[e.key] = ctx.renderer.text(e.value, c.source, (*c.base, "envs", j, "value"))
            if e.options.sensitive:
                secret.add(e.key)
        for j, v in enumerate(c.spec.variables):
            values[v.name] = ctx.renderer.value(v.value, c.source, (*c.base, "variables", j, "value"))
            if v.options.sensitive:
                secret.add(v.name)
    return env, values, secret


def driver_run(
    ctx: HookContext,
    driver: ResolvedDriver,
    container: ContainerOptions | None,
    http: HttpOptions | None,
    opath: Path,
) -> Run | None:
    config, dsrc, dpath = driver.config, driver.source, driver.path
    extra_env, extra_inputs, secret = input_contexts(ctx, driver.inputs)
    run = _driver_primitive(ctx, config, dsrc, dpath, container, http, opath, extra_env)
    if run is None or not (extra_inputs or secret):
        return run
    return Run(run.kind, run.spec, run.timeout, run.max_retries, extra_inputs, tuple(sorted(secret)))


def _driver_primitive(
    ctx: HookContext,
    config: DriverConfig,
    dsrc: Source | None,
    dpath: Path,
    container: ContainerOptions | None,
    http: HttpOptions | None,
    opath: Path,
    extra_env: dict[str, str],
) -> Run | None:
    timeout = float(config.timeout_seconds) if config.timeout_seconds is not None else None
    retries = config.max_retry_count
    if config.type == "container":
        spec = container_spec(
            ctx,
            config.container,
            dsrc,
            (*dpath, "container"),
            container,
            ctx.source,
            (*opath, "container"),
            extra_env=extra_env,
        )
        if not spec.success_condition and config.success_condition:
            spec = _with_condition(spec, ctx.renderer.raw(config.success_condition, dsrc, (*dpath, "successCondition")))
        return Run("container", spec, timeout, retries)
    if config.type == "http":
        base = config.http or HttpOptions()
        spec_http = http_spec(
            ctx.renderer, dsrc, (*dpath, "http"), http or HttpOptions(), ctx.source, (*opath, "http"), base
        )
        if not spec_http.success_condition and config.success_condition:
            condition = http_condition(ctx.renderer, config.success_condition, dsrc, (*dpath, "successCondition"))
            spec_http = msgspec.structs.replace(spec_http, success_condition=condition)
        return Run("http", spec_http, timeout, retries)
    return _function(ctx, config, dsrc, dpath, timeout, retries, extra_env)


def _with_condition(spec: ContainerSpec, condition: str) -> ContainerSpec:
    """The driver-level successCondition, when the container options set none."""
    return msgspec.structs.replace(spec, success_condition=condition)


def _function(
    ctx: HookContext,
    config: DriverConfig,
    dsrc: Source | None,
    dpath: Path,
    timeout: float | None,
    retries: int,
    extra_env: dict[str, str],
) -> Run | None:
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
        env=dict(ctx.env) | extra_env | r.texts(fn.env_vars, dsrc, (*fpath, "envVars")),
        cpu_limit_milli=limit(fn.cpu_limit_milli, ctx.problems, dsrc, (*fpath, "cpuLimitMilli")),
        memory_limit_mb=limit(fn.memory_limit_mb, ctx.problems, dsrc, (*fpath, "memoryLimitMb")),
    )
    return Run("function", spec, until, retries)
