"""`make bench`: a generated 1,000-resource environment (~7,000 activities) from YAML text to a
Workflow; target < 1 s. Prints load+validate, compile and the total side by side."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import msgspec
import pytest
import yaml

from trellis_core.events import SourceFile
from trellis_templates import expressions
from trellis_templates.compiler import compile_bundle, compile_sources
from trellis_templates.documents import (
    Document,
    Environment,
    EnvironmentResource,
    EnvironmentSpec,
    EnvironmentTemplate,
    EnvironmentTemplateHooks,
    EnvironmentTemplateSpec,
    Hook,
    HookOptions,
    HttpOptions,
    IacOptions,
    Metadata,
    NameRef,
    ProviderOptions,
    RepositoryOptions,
    ResourceHooks,
    ResourceTemplate,
    ResourceTemplateSpec,
    ScriptOptions,
    Variable,
    VersionedRef,
)
from trellis_templates.errors import Problems
from trellis_templates.loader import LIBYAML, Reader, gc_paused, load_text
from trellis_templates.validate import parse_documents

API = "trellis.dev/v1"
RESOURCES = 1000
RUNS = 7


def generated(count: int = RESOURCES, seed: int = 7) -> list[Any]:
    """OpenTofu resources: checkout, 4 stages, an on-success and an on-completion hook (7 each)."""
    rng = random.Random(seed)
    docs: list[Any] = []
    entries = []
    for i in range(count):
        ups = rng.sample(range(i), k=min(i, 2))
        reads = [f"$(resource.r{u}.output.id.value)$" for u in ups[:1]]
        spec = ResourceTemplateSpec(
            provider="opentofu",
            provider_options=ProviderOptions(open_tofu=IacOptions(backend_configs=[f"key=$(environment.name)$/r{i}"])),
            repository_options=RepositoryOptions(url="https://git.example.com/m.git", directory_path=f"m/{i % 10}"),
            variables=[Variable(name="size", value=str(i)), *(Variable(name="up", value=r) for r in reads)],
            hooks=ResourceHooks(
                on_success=[
                    Hook(
                        name="notify",
                        type="http",
                        options=HookOptions(
                            http=HttpOptions(endpoint="https://hooks.example.com/$(environment.name)$/r" + str(i))
                        ),
                    )
                ],
                on_completion=[
                    Hook(
                        name="cleanup",
                        type="script",
                        options=HookOptions(script=ScriptOptions(script="echo $(variables.size)$")),
                    )
                ],
            ),
        )
        docs.append(ResourceTemplate(api_version=API, metadata=Metadata(name=f"r{i}"), spec=spec))
        entries.append(EnvironmentResource(name=f"r{i}", depends_on=[NameRef(name=f"r{u}") for u in ups[1:]]))
    hook = Hook(name="hello", type="script", options=HookOptions(script=ScriptOptions(script="echo hi")))
    docs.append(
        EnvironmentTemplate(
            api_version=API,
            metadata=Metadata(name="big"),
            spec=EnvironmentTemplateSpec(
                resources=entries, hooks=EnvironmentTemplateHooks(on_init=[hook], on_completion=[hook])
            ),
        )
    )
    docs.append(
        Environment(
            api_version=API,
            metadata=Metadata(name="big-env"),
            spec=EnvironmentSpec(template=VersionedRef(name="big")),
        )
    )
    return docs


def median_seconds(fn: Any, runs: int = RUNS) -> float:
    """Median CPU time of `fn`: single-threaded work, steadier than wall time on a shared machine."""
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def load_and_validate(text: str, reader: Reader = "auto") -> list[Document]:
    """As `load_bundle` does it (collection paused), from text instead of files."""
    problems = Problems()
    with gc_paused():
        docs = parse_documents(load_text(text, "big.yaml", problems, reader=reader), problems)
    assert not problems.errors, problems.errors[:3]
    return [d.document for d in docs]


def cold(fn: Any) -> Any:
    """`fn` as in a fresh process (`trellis template compile`): no expression compiled yet."""

    def run() -> None:
        expressions._parse_cached.cache_clear()
        expressions._compile.cache_clear()
        fn()

    return run


@pytest.mark.bench
def test_compiling_a_thousand_resources_takes_under_a_second_median() -> None:
    docs = generated()
    result = compile_bundle(docs, "big-env", {}, "deploy")
    assert result.workflow is not None, result.errors[:3]
    count = len(result.workflow.activities)
    text = "---\n".join(yaml.safe_dump(msgspec.to_builtins(d), sort_keys=False) for d in docs)
    reference: Reader = "libyaml" if LIBYAML else "pyyaml"
    # Not timed: the generated text stays on the fast reader, which reads it as PyYAML does.
    problems = Problems()
    fast = [(d.data, d.source) for d in load_text(text, "big.yaml", problems, reader="fast")]
    assert fast == [(d.data, d.source) for d in load_text(text, "big.yaml", problems, reader=reference)]
    assert load_and_validate(text) == docs
    del fast

    def whole() -> None:  # the compiler service's call: YAML text to a Workflow
        out = compile_sources([SourceFile(path="big.yaml", text=text)], "big-env", {}, "deploy")
        assert out.workflow is not None

    load_s = median_seconds(lambda: load_and_validate(text))
    pyyaml_s = median_seconds(lambda: load_and_validate(text, reference), runs=3)
    compile_s = median_seconds(lambda: compile_bundle(docs, "big-env", {}, "deploy"))
    cold_compile_s = median_seconds(cold(lambda: compile_bundle(docs, "big-env", {}, "deploy")))
    total_s = median_seconds(whole)
    cold_total_s = median_seconds(cold(whole))
    encode_s = median_seconds(lambda: msgspec.json.encode(result.workflow))
    print(
        f"\ncompile {RESOURCES} resources -> {count} activities ({len(text) / 1e6:.1f} MB of YAML), CPU medians:"
        f"\n  load+validate   {load_s * 1000:6.0f} ms   (through PyYAML/{reference} instead: {pyyaml_s * 1000:.0f} ms)"
        f"\n  compile         {compile_s * 1000:6.0f} ms   (no expression compiled yet: {cold_compile_s * 1000:.0f} ms)"
        f"\n  total           {total_s * 1000:6.0f} ms   (no expression compiled yet: {cold_total_s * 1000:.0f} ms)"
        f"\n  JSON encode     {encode_s * 1000:6.0f} ms"
    )
    print(f"target < 1 s: {'met' if cold_total_s < 1.0 else 'NOT MET'}")  # figures, not a timed assertion
    assert 6500 <= count <= 7500
