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
from trellis_templates.sealing import Sealer

NO_RETRY = Activity(id="", kind="http", spec=HttpSpec(url="")).retry  # the default: omitted in JSON
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_STATUS_LINE = re.compile(r"\s*([1-5]\d\d)(?:\s+[A-Za-z][A-Za-z' -]*)?\s*")  # Rafay's "200 OK"


@dataclass(slots=True, kw_only=True)
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
    sealer: Sealer | None = None  # seals the sensitive values of a driver's input contexts


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
    renderer: Renderer,
    *,
    over: HttpOptions,
    over_source: Source | None,
    over_path: Path,
    base: HttpOptions | None = None,
    base_source: Source | None = None,
    base_path: Path = (),
) -> HttpSpec:
    """An http call's spec; each field of `over` that is set replaces the one of `base`."""

    def pick(name: str) -> tuple[Any, Source | None, Path]:
        value = getattr(over, name)
        if value is not None or base is None:
            return value, over_source, (*over_path, _camel(name))
        return getattr(base, name), base_source, (*base_path, _camel(name))

    endpoint, endpoint_source, endpoint_path = pick("endpoint")
    if not endpoint:
        renderer.problems.error(endpoint_source, endpoint_path, "an http call needs an endpoint")
    method, _, _ = pick("method")
    headers, headers_source, headers_path = pick("headers")
    body, body_source, body_path = pick("body")
    condition, condition_source, condition_path = pick("success_condition")
    verify, _, _ = pick("verify_tls")
    return HttpSpec(
        url=renderer.text(endpoint or "", endpoint_source, endpoint_path),
        method=(method or "POST").upper(),
        headers=renderer.texts(headers, headers_source, headers_path),
        body=renderer.text(body or "", body_source, body_path),
        verify_tls=True if verify is None else verify,
        success_condition=http_condition(renderer, condition or "", condition_source, condition_path),
    )


def http_condition(renderer: Renderer, condition: str, source: Source | None, path: Path) -> str:
    """An http call's successCondition; a status line as Rafay writes it ("200 OK", "201
    Created") would fail every call as an expression: it is read as `response.status == 200`."""
    status = _STATUS_LINE.fullmatch(condition)
    if status is None:
        return renderer.raw(condition, source, path)
    expression = f"$(response.status == {status[1]})$"
    renderer.problems.warn(
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
    *,
    over: ContainerOptions | None,
    over_source: Source | None,
    over_path: Path,
    base: ContainerOptions | None = None,
    base_source: Source | None = None,
    base_path: Path = (),
    extra_env: dict[str, str] | None = None,
) -> ContainerSpec:
    """A container spec; each field of `over` that is set replaces the one of `base`."""
    renderer = ctx.renderer

    def pick(name: str) -> tuple[Any, Source | None, Path]:
        value = getattr(over, name) if over is not None else None
        if value is not None or base is None:
            return value, over_source, (*over_path, _camel(name))
        return getattr(base, name), base_source, (*base_path, _camel(name))

    def texts(name: str) -> dict[str, str]:
        values, source, path = pick(name)
        return renderer.texts(values, source, path)

    def items(name: str) -> tuple[str, ...]:
        values, source, path = pick(name)
        return tuple(renderer.text(item, source, (*path, index)) for index, item in enumerate(values or ()))

    def text(name: str) -> str:
        value, source, path = pick(name)
        return renderer.text(value or "", source, path)

    def whole_number(name: str) -> int | None:
        value, source, path = pick(name)
        return limit(value, ctx.problems, source, path)

    image = text("image")
    command, args, env = items("commands"), items("arguments"), texts("env_vars")
    files, working_dir = texts("files"), text("working_dir_path")
    cpu, memory = whole_number("cpu_limit_milli"), whole_number("memory_limit_mb")
    condition, condition_source, condition_path = pick("success_condition")
    return ContainerSpec(
        image=image,
        command=command,
        args=args,
        env=dict(ctx.env) | (extra_env or {}) | env,
        files=dict(ctx.files) | files,
        working_dir=working_dir,
        cpu_limit_milli=cpu,
        memory_limit_mb=memory,
        success_condition=renderer.raw(condition or "", condition_source, condition_path),
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
    found = ctx.bundle.find(Driver, ref.name, ref.version, problems=ctx.problems, where=(ctx.source, (*path, "name")))
    if found is None:
        return None
    driver, driver_source = found
    inputs = attach(ctx.bundle, driver.spec.inputs, driver_source, ("spec", "inputs"), ctx.problems)
    return ResolvedDriver(driver.spec.config, driver_source, ("spec", "config"), inputs)


def input_contexts(ctx: HookContext, inputs: list[Attached]) -> tuple[dict[str, str], dict[str, Any], set[str]]:
    """A driver's input contexts: their envs, their variables (as inputs), and which are secret."""
    env: dict[str, str] = {}
    values: dict[str, Any] = {}
    secret: set[str] = set()
    for c in inputs:
        for j, e in enumerate(c.spec.envs):
            env_path = (*c.base, "envs", j, "value")
            env[e.key] = ctx.renderer.text(e.value, c.source, env_path)
            if e.options.sensitive:
                secret.add(e.key)
                if ctx.sealer is not None:
                    env[e.key] = ctx.sealer.text(env[e.key], f"env {e.key!r} of {c.label}", c.source, env_path)
        for j, v in enumerate(c.spec.variables):
            value_path = (*c.base, "variables", j, "value")
            values[v.name] = ctx.renderer.value(v.value, c.source, value_path)
            if v.options.sensitive:
                secret.add(v.name)
                if ctx.sealer is not None:
                    what = f"variable {v.name!r} of {c.label}"
                    values[v.name] = ctx.sealer.value(values[v.name], what, c.source, value_path)
    return env, values, secret


def driver_run(
    ctx: HookContext,
    driver: ResolvedDriver,
    container: ContainerOptions | None,
    http: HttpOptions | None,
    over_path: Path,
) -> Run | None:
    """What a driver runs, its options overridden by the hook's own `container`/`http` at `over_path`."""
    extra_env, extra_inputs, secret = input_contexts(ctx, driver.inputs)
    run = _driver_primitive(ctx, driver, container=container, http=http, over_path=over_path, extra_env=extra_env)
    if run is None or not (extra_inputs or secret):
        return run
    return Run(run.kind, run.spec, run.timeout, run.max_retries, extra_inputs, tuple(sorted(secret)))


def _driver_primitive(
    ctx: HookContext,
    driver: ResolvedDriver,
    *,
    container: ContainerOptions | None,
    http: HttpOptions | None,
    over_path: Path,
    extra_env: dict[str, str],
) -> Run | None:
    config, driver_source, driver_path = driver.config, driver.source, driver.path
    timeout = float(config.timeout_seconds) if config.timeout_seconds is not None else None
    retries = config.max_retry_count
    condition_path = (*driver_path, "successCondition")
    if config.type == "container":
        spec = container_spec(
            ctx,
            over=container,
            over_source=ctx.source,
            over_path=(*over_path, "container"),
            base=config.container,
            base_source=driver_source,
            base_path=(*driver_path, "container"),
            extra_env=extra_env,
        )
        if not spec.success_condition and config.success_condition:
            spec = _with_condition(spec, ctx.renderer.raw(config.success_condition, driver_source, condition_path))
        return Run("container", spec, timeout, retries)
    if config.type == "http":
        spec_http = http_spec(
            ctx.renderer,
            over=http or HttpOptions(),
            over_source=ctx.source,
            over_path=(*over_path, "http"),
            base=config.http or HttpOptions(),
            base_source=driver_source,
            base_path=(*driver_path, "http"),
        )
        if not spec_http.success_condition and config.success_condition:
            condition = http_condition(ctx.renderer, config.success_condition, driver_source, condition_path)
            spec_http = msgspec.structs.replace(spec_http, success_condition=condition)
        return Run("http", spec_http, timeout, retries)
    return _function(ctx, driver, timeout=timeout, retries=retries, extra_env=extra_env)


def _with_condition(spec: ContainerSpec, condition: str) -> ContainerSpec:
    """The driver-level successCondition, when the container options set none."""
    return msgspec.structs.replace(spec, success_condition=condition)


def _function(
    ctx: HookContext,
    driver: ResolvedDriver,
    *,
    timeout: float | None,
    retries: int,
    extra_env: dict[str, str],
) -> Run | None:
    config, driver_source, driver_path = driver.config, driver.source, driver.path
    function, function_path, renderer = config.function, (*driver_path, "function"), ctx.renderer
    if function is None or not (function.image or function.endpoint):
        source_only = function is not None and function.source is not None
        msg = (
            "a function built from source is not supported: give an image or an endpoint"
            if source_only
            else "a function driver needs function.image or function.endpoint"
        )
        ctx.problems.error(driver_source, function_path, msg)
        return None
    polling = config.polling_config
    repeat, until = 15.0, 3600.0
    if polling is not None:
        polling_path = (*driver_path, "pollingConfig")
        for field_name in ("repeat", "until"):
            seconds = parse_duration(getattr(polling, field_name))
            if seconds is None:
                text = getattr(polling, field_name)
                ctx.problems.error(
                    driver_source, (*polling_path, field_name), f"{text!r} is not a duration", "e.g. 15s, 1h"
                )
            elif field_name == "repeat":
                repeat = seconds
            else:
                until = seconds
    spec = FunctionSpec(
        image=renderer.text(function.image, driver_source, (*function_path, "image")),
        endpoint=renderer.text(function.endpoint, driver_source, (*function_path, "endpoint")),
        repeat_seconds=repeat,
        until_seconds=until,
        invocation_timeout_seconds=timeout if timeout is not None else 300.0,
        env=dict(ctx.env) | extra_env | renderer.texts(function.env_vars, driver_source, (*function_path, "envVars")),
        cpu_limit_milli=limit(function.cpu_limit_milli, ctx.problems, driver_source, (*function_path, "cpuLimitMilli")),
        memory_limit_mb=limit(function.memory_limit_mb, ctx.problems, driver_source, (*function_path, "memoryLimitMb")),
    )
    return Run("function", spec, until, retries)
