"""`make bench`: compile a generated 1,000-resource environment (~7,000 activities); target < 1 s."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import msgspec
import pytest
import yaml

from trellis_templates.compiler import compile_bundle
from trellis_templates.documents import (
    Environment,
    EnvironmentHooks,
    EnvironmentResource,
    EnvironmentSpec,
    EnvironmentTemplate,
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
from trellis_templates.loader import load_text
from trellis_templates.validate import parse_documents

API = "trellis.dev/v1"
RESOURCES = 1000
RUNS = 5


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
                resources=entries, hooks=EnvironmentHooks(on_init=[hook], on_completion=[hook])
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
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.mark.bench
def test_compiling_a_thousand_resources_takes_under_a_second_median() -> None:
    docs = generated()
    result = compile_bundle(docs, "big-env", {}, "deploy")
    assert result.workflow is not None, result.errors[:3]
    count = len(result.workflow.activities)
    compile_s = median_seconds(lambda: compile_bundle(docs, "big-env", {}, "deploy"))
    encode_s = median_seconds(lambda: msgspec.json.encode(result.workflow))
    text = "---\n".join(yaml.safe_dump(msgspec.to_builtins(d), sort_keys=False) for d in docs)

    def load_and_validate() -> None:
        problems = Problems()
        parse_documents(load_text(text, "big.yaml", problems), problems)

    load_s = median_seconds(load_and_validate, runs=3)
    print(
        f"\ncompile {RESOURCES} resources -> {count} activities: "
        f"median {compile_s * 1000:.0f} ms over {RUNS} runs;"
        f" JSON encode {encode_s * 1000:.0f} ms; YAML load+validate {load_s * 1000:.0f} ms"
    )
    print(f"target < 1 s: {'met' if compile_s < 1.0 else 'NOT MET'}")  # figures, not a timed assertion
    assert 6500 <= count <= 7500
