"""Downstream impact: which resources a changing output reaches, from who reads which outputs."""

from __future__ import annotations

from trellis_core.workflow import Activity, ContainerSpec
from trellis_templates.drift_impact import ANY_OUTPUT, impacted, output_readers, read_outputs


def reading(resource: str, text: str) -> Activity:
    return Activity(id=f"resource/{resource}/task/t", kind="container", resource=resource,
                    spec=ContainerSpec(env={"X": text}), inputs={"v": [{"deep": text}]})


def test_a_chain_reaches_every_resource_downstream() -> None:
    readers = {"a": {"x": ("b",)}, "b": {"y": ("c",)}}
    assert impacted(readers, [("a", "x")]) == ("b", "c")
    assert impacted(readers, [("b", "y")]) == ("c",)


def test_an_output_nobody_reads_impacts_nothing() -> None:
    readers = {"a": {"x": ("b",)}, "b": {"y": ("c",)}}
    assert impacted(readers, [("a", "other")]) == ()
    assert impacted(readers, [("c", "z")]) == ()
    assert impacted(readers, []) == ()


def test_a_diamond_lists_each_resource_once() -> None:
    readers = {"a": {"x": ("b", "c")}, "b": {"y": ("d",)}, "c": {"z": ("d",)}, "d": {"w": ("e",)}}
    assert impacted(readers, [("a", "x")]) == ("b", "c", "d", "e")


def test_unrelated_branches_stay_out() -> None:
    readers = {"a": {"x": ("b",), "q": ("z",)}, "b": {"y": ("c",)}, "u": {"v": ("w",)}}
    assert impacted(readers, [("a", "x")]) == ("b", "c")


def test_a_resource_reading_the_whole_outputs_is_reached_by_any_of_them() -> None:
    readers = {"a": {ANY_OUTPUT: ("b",), "x": ("c",)}}
    assert impacted(readers, [("a", "anything")]) == ("b",)
    assert impacted(readers, [("a", "x")]) == ("b", "c")


def test_readers_come_from_every_string_of_the_activities() -> None:
    acts = [
        reading("b", "$(resource.a.output.x.value)$"),
        reading("c", "pre $(resource['b'].output['y'].value | upper)$ and $(resource.a.output.x.value)$"),
        reading("d", "$(resource.c.output)$"),
        reading("e", "$(resource.a.output.x.value)$ no self: $(resource.e.output.q.value)$"),
        Activity(id="environment/on-success/n", kind="container", spec=ContainerSpec(env={"X": "$(resource.a)$"})),
    ]
    assert output_readers(acts) == {
        "a": {"x": ("b", "c", "e")},
        "b": {"y": ("c",)},
        "c": {ANY_OUTPUT: ("d",)},
    }


def test_reading_outputs_of_plain_and_broken_text_finds_nothing() -> None:
    assert read_outputs("no expressions") == set()
    assert read_outputs("$(resource.a.output.x.value") == set()
    assert read_outputs("$(resource[variables.name].output.x.value)$") == set()
