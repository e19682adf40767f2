"""Late binding: render an activity's `$( )$` strings with upstream outputs just before dispatch.

The engine is given its `Renderer` (the scheduler passes `trellis_templates.expressions.LATE`);
it only walks the activity's strings, calls it, and turns any error (an exceeded render budget
included) into a message for the failed activity. All of one activity's strings share one
render budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import Any, Protocol

import msgspec

from trellis_core.errors import TrellisError
from trellis_core.workflow import Activity
from trellis_engine.state import RunState

_MARK = "$("
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off", "none", "null"})


class Renderer(Protocol):
    """What late binding needs of the template language."""

    def render(self, value: Any, scope: dict[str, Any]) -> Any:
        """Render every `$( )$` string in `value` with `scope`; raise with the reason."""
        ...

    def budget(self) -> AbstractContextManager[object]:
        """One render budget for every `render` inside the `with` block."""
        ...


class CallbackMinter(Protocol):
    """Mints the callback URL of one approval attempt (the scheduler's: a signed, expiring token
    on the gateway's URL, or "" when it has no key). Not pure: it is called only at dispatch."""

    def __call__(self, tenant: str, run_id: str, activity: Activity, attempt: int, now: float) -> str: ...


class _Approval(Mapping[str, str]):
    """`approval` in an approval attempt's scope: `callback_url` is minted when an expression
    first reads it (so an approval whose strings never name it mints nothing)."""

    def __init__(self, mint: Callable[[], str]) -> None:
        self._mint = mint
        self._url: str | None = None

    def __getitem__(self, key: str) -> str:
        if key != "callback_url":
            raise KeyError(key)
        if self._url is None:
            self._url = self._mint()
        return self._url

    def __iter__(self) -> Iterator[str]:
        return iter(("callback_url",))

    def __len__(self) -> int:
        return 1


def late_scope(
    run: RunState,
    activity: Activity,
    callback: Callable[[], str] | None = None,
    deployed: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The names a late-bound expression sees: the workflow's scope, the activity's own inputs
    as `variables`, every output recorded so far as `resource.R.output.K.value` (read-only
    views: the recorded outputs belong to the run, never to an expression), and for an approval
    attempt being dispatched `approval.callback_url` from `callback`. `deployed`: outputs under
    the run's own (a day-2 action reads the environment's last deploy's)."""
    scope = dict(run.workflow.scope)
    scope["variables"] = activity.inputs
    scope["resource"] = _Resources(run.outputs, deployed or {})
    if callback is not None:
        scope["approval"] = _Approval(callback)
    else:  # no attempt is being dispatched (a skip condition, a test): keep the expression as is
        scope.setdefault("approval", {"callback_url": "$(approval.callback_url)$"})
    return scope


class _Resources(Mapping[str, Mapping[str, Any]]):
    """A late scope's `resource`: `resource.R.output.K.value` over the outputs recorded so far
    (over `deployed`'s where given), read-only, looked up by name as an expression reads it. A
    dispatch costs what its expressions read, not a copy of every output of the run, which made
    a run's rendering grow with the square of its size."""

    __slots__ = ("_deployed", "_recorded")

    def __init__(self, recorded: Mapping[str, Mapping[str, Any]], deployed: Mapping[str, Mapping[str, Any]]) -> None:
        self._recorded = recorded
        self._deployed = deployed

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        own, base = self._recorded.get(name), self._deployed.get(name)
        if own is None and base is None:
            raise KeyError(name)
        outputs = {**(base or {}), **(own or {})} if base is not None else own
        return MappingProxyType({"output": MappingProxyType(dict(outputs or {}))})

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._deployed, *self._recorded]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._deployed, *self._recorded]))


class RenderError(TrellisError):
    """A late-bound expression could not be rendered; the message says where and why."""


def _render_tree(value: Any, scope: dict[str, Any], render: Renderer, path: str, as_text: bool) -> Any:
    if isinstance(value, str):
        if _MARK not in value:
            return value
        try:
            out = render.render(value, scope)
        except Exception as exc:  # the renderer's errors are user errors: report, never crash
            raise RenderError(f"{path}: {exc}") from None
        if as_text and not isinstance(out, str):
            return json.dumps(out)
        return out
    if isinstance(value, dict):
        return {k: _render_tree(v, scope, render, f"{path}.{k}", as_text) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_tree(v, scope, render, f"{path}[{n}]", as_text) for n, v in enumerate(value)]
    return value


def render_activity(activity: Activity, scope: dict[str, Any], render: Renderer | None) -> Activity:
    """The activity with its spec and inputs rendered; raises RenderError with the field path."""
    if render is None:
        raise RenderError("late-bound expressions need a renderer, and the engine was given none")
    data = msgspec.to_builtins(activity)
    with render.budget():
        if "spec" in data:
            data["spec"] = _render_tree(data["spec"], scope, render, "spec", as_text=True)
        if "inputs" in data:
            data["inputs"] = _render_tree(data["inputs"], scope, render, "inputs", as_text=False)
    try:
        return msgspec.convert(data, Activity)
    except msgspec.ValidationError as exc:
        raise RenderError(f"rendered activity is invalid: {exc}") from None


def skip_condition_holds(condition: str, scope: dict[str, Any], render: Renderer | None) -> bool:
    """Whether a skip condition is truthy; raises RenderError when it cannot be rendered."""
    if _MARK not in condition:
        return condition.strip().lower() not in _FALSE_WORDS
    if render is None:
        raise RenderError("skip conditions need a renderer, and the engine was given none")
    try:
        value = render.render(condition, scope)
    except Exception as exc:
        raise RenderError(f"skip condition: {exc}") from None
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value)
