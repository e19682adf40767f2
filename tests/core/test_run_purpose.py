"""RunPurpose: what a run is for beyond its action, as the store labels it and who refuses what."""

from __future__ import annotations

import msgspec
import pytest

from trellis_core.events import RunRequested, decode_run_event, encode
from trellis_core.workflow import NO_PURPOSE, RunPurpose
from trellis_templates.compiler import compile_bundle


@pytest.mark.parametrize(
    ("purpose", "label", "ordinary"),
    [
        (NO_PURPOSE, "", True),
        (RunPurpose(day2_action="rotate"), "action:rotate", False),
        (RunPurpose(force=True), "force-destroy", True),
        (RunPurpose(drift=True), "drift", False),
    ],
)
def test_labels(purpose: RunPurpose, label: str, ordinary: bool) -> None:
    assert purpose.label == label
    assert purpose.ordinary is ordinary


@pytest.mark.parametrize(
    ("purpose", "action", "problem"),
    [
        (RunPurpose(force=True), "deploy", "force applies to a destroy only"),
        (RunPurpose(drift=True), "destroy", "drift runs with action deploy, not destroy"),
        (RunPurpose(day2_action="x"), "destroy", "a day-2 action runs with action deploy, not destroy"),
        (RunPurpose(day2_action="x", drift=True), "deploy", "a run is one of a day-2 action and drift, not several"),
        (RunPurpose(force=True), "destroy", ""),
        (RunPurpose(drift=True), "deploy", ""),
    ],
)
def test_what_goes_with_which_action(purpose: RunPurpose, action: str, problem: str) -> None:
    assert purpose.problem(action) == problem  # type: ignore[arg-type]


def test_a_request_without_it_is_ordinary_and_a_purpose_round_trips() -> None:
    plain = RunRequested(tenant="t", run_id="r", environment="e")
    older = msgspec.json.decode(encode(plain))
    del older["purpose"], older["trigger"]  # as a CLI of the previous release publishes it
    read = decode_run_event(msgspec.json.encode(older))
    assert isinstance(read, RunRequested)
    assert read.purpose == NO_PURPOSE
    assert read.trigger == {}
    forced = msgspec.structs.replace(plain, action="destroy", purpose=RunPurpose(force=True), trigger={"type": "api"})
    again = decode_run_event(encode(forced))
    assert isinstance(again, RunRequested)
    assert again.purpose == RunPurpose(force=True)
    assert again.trigger == {"type": "api"}


def test_the_compiler_refuses_a_purpose_that_does_not_go_with_the_action() -> None:
    result = compile_bundle([], "demo", action="deploy", purpose=RunPurpose(force=True))
    assert result.workflow is None
    assert [e.message for e in result.errors] == ["run request: force applies to a destroy only"]
