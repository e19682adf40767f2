"""What sealing costs, side by side with the same work in clear (`make bench`).

* scheduler throughput over the 20-wide x 200-deep DAG of test_scheduler_bench.py, run by the
  real agent (noop executor), every activity's env holding a sealed token vs the same value in
  clear (the agent opens it and masks it in whatever the activity sends back). Plain and
  sealed runs alternate, each on a fresh tenant; the medians and their ratio are printed, and
  the scheduler's CPU per activity (this process), steadier on a shared machine. Target: sealed within 10% of plain. The
  agent asks for its tenant's keys on `trellis.<tenant>.keys.get` as from the state store: this
  process answers it as the store does, with the material of a fresh master key.
* compile time of a template with N sensitive variables: values in clear and not sealed (a
  preview), in clear and sealed at the source by the compiler (a bus request), and given as
  tokens (what the CLI and the gateway send), CPU medians.

Benchmarks print figures and assert nothing on time.
"""

from __future__ import annotations

import asyncio
import inspect
import resource
import statistics
import time
import uuid
from typing import Any

import msgspec
import pytest
from test_compile_bench import cold, median_seconds
from test_scheduler_bench import Timings, stack

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunCompiled, RunCompleted, RunEvent, RunStarted, SourceFile
from trellis_core.ids import new_run_id
from trellis_core.sealed import KeysAnswer, MasterKeyring, TenantKeys, new_master_key
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ContainerSpec, TemplateRef, Workflow
from trellis_templates.compiler import compile_bundle, compile_sources

pytestmark = pytest.mark.bench
WIDTH, DEPTH, ROUNDS = 20, 200, 5
SECRET = f"S3cr3t-{uuid.uuid4()}"


def holding(value: str, width: int = WIDTH, depth: int = DEPTH) -> Workflow:
    """test_scheduler_bench's grid, each activity's env holding `value`. One value an activity:
    a RunCompiled of 4,000 activities must fit the 1 MiB max_payload of a default nats-server,
    and a token is 126 characters (the grid alone is ~450 KB; one token each makes it ~990 KB)."""
    acts = [
        Activity(
            id=f"n{d}x{w}",
            kind="container",
            spec=ContainerSpec(command=("true",), env={"P": value}),
            depends_on=(f"n{d - 1}x{w}", f"n{d - 1}x{(w + 1) % width}") if d else (),
        )
        for d in range(depth)
        for w in range(width)
    ]
    return Workflow(environment="bench", template=TemplateRef(name="bench"), action="deploy", activities=tuple(acts))


async def _answer_keys(bus: Bus, keys: TenantKeys) -> Any:
    """Answer the agent's keys request as the state store does (subjects.keys_request)."""
    answer = msgspec.json.encode(KeysAnswer(material=keys.material()))

    async def reply(msg: Any) -> None:
        await msg.respond(answer)

    return await bus.nc.subscribe(subjects.keys_request(keys.tenant), cb=reply)


async def _throughput(
    bus: Bus, settings: Settings, tenant: str, wf: Workflow, keys: TenantKeys
) -> tuple[float, float, float]:
    """Activities a second from the run's start to its completion, as the events stamp them;
    this process's CPU (the scheduler's) and the agent's (its whole life, start included: a
    child's CPU is counted once it is waited for) per activity in ms, steadier on a shared machine."""
    responder = await _answer_keys(bus, keys)
    agent_cpu = _children_cpu()
    try:
        async with stack(bus, settings, tenant) as timings:
            cpu = time.process_time()
            rate = await _one_run(bus, tenant, wf, timings)
            cpu = time.process_time() - cpu
    finally:
        await responder.unsubscribe()
    per = 1000 / len(wf.activities)
    return rate, cpu * per, (_children_cpu() - agent_cpu) * per


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _one_run(bus: Bus, tenant: str, wf: Workflow, timings: Timings) -> float:
    run_id = new_run_id()
    await bus.publish_event(RunCompiled(tenant=tenant, run_id=run_id, workflow=wf))
    async with asyncio.timeout(300):
        await timings.done.wait()
    done = next(e for e in timings.events if isinstance(e, RunCompleted))
    assert done.status == "succeeded", done.message
    decode = msgspec.json.Decoder(RunEvent).decode
    sub = await bus.js.subscribe(subjects.run_events(tenant, run_id), ordered_consumer=True)
    try:
        while True:  # the run's first events, read after the measurement
            event = decode((await sub.next_msg(timeout=5)).data)
            if isinstance(event, RunStarted):
                break
    finally:
        await sub.unsubscribe()
    return len(wf.activities) / (done.occurred_at - event.occurred_at).total_seconds()


async def test_scheduler_throughput_with_sealed_inputs_vs_plain(bus: Bus, settings: Settings, unique: str) -> None:
    rates: dict[str, list[float]] = {"plain": [], "sealed": []}
    cpus: dict[str, list[float]] = {"plain": [], "sealed": []}
    agent_cpus: dict[str, list[float]] = {"plain": [], "sealed": []}
    for n in range(ROUNDS):
        for variant in ("plain", "sealed") if n % 2 == 0 else ("sealed", "plain"):
            tenant = f"{unique}{variant[0]}{n}"
            keys = MasterKeyring(new_master_key()).for_tenant(tenant)
            wf = holding(keys.seal(SECRET) if variant == "sealed" else SECRET)
            rate, cpu, agent_cpu = await _throughput(bus, settings, tenant, wf, keys)
            rates[variant].append(rate)
            cpus[variant].append(cpu)
            agent_cpus[variant].append(agent_cpu)
    plain, sealed = statistics.median(rates["plain"]), statistics.median(rates["sealed"])
    plain_cpu, sealed_cpu = statistics.median(cpus["plain"]), statistics.median(cpus["sealed"])
    plain_agent, sealed_agent = statistics.median(agent_cpus["plain"]), statistics.median(agent_cpus["sealed"])
    ratio = sealed / plain
    print(f"\n{WIDTH}x{DEPTH} DAG, real agent, {ROUNDS} runs each, activities/s: "
          f"plain median {plain:.0f} ({', '.join(f'{r:.0f}' for r in rates['plain'])}), "
          f"sealed median {sealed:.0f} ({', '.join(f'{r:.0f}' for r in rates['sealed'])}); "
          f"sealed/plain {ratio:.2f}")  # fmt: skip
    print(f"scheduler CPU per activity: plain {plain_cpu:.3f} ms, sealed {sealed_cpu:.3f} ms "
          f"(sealed/plain {sealed_cpu / plain_cpu:.2f})")  # fmt: skip
    print(f"agent CPU per activity (opening and masking included): plain {plain_agent:.3f} ms, "
          f"sealed {sealed_agent:.3f} ms (sealed/plain {sealed_agent / plain_agent:.2f})")  # fmt: skip
    print(f"target sealed within 10% of plain: {'met' if ratio >= 0.9 else 'MISSED'} (throughput), "
          f"{'met' if sealed_cpu <= plain_cpu * 1.1 else 'MISSED'} (scheduler CPU), "
          f"{'met' if sealed_agent <= plain_agent * 1.1 else 'MISSED'} (agent CPU)")


def sensitive_template(count: int, per_resource: int = 10) -> str:
    """An environment of count/per_resource script resources, each reading `per_resource` of the
    environment's `count` sensitive variables, alone and inside a URL."""
    docs = []
    resources = []
    for r in range(count // per_resource):
        lines = []
        for i in range(r * per_resource, (r + 1) * per_resource):
            lines.append(f'echo "$(environment.variables.v{i})$" | wc -c')
            lines.append(f'curl -s "https://app:$(environment.variables.v{i})$@api.internal/{i}" || true')
        script = "\n".join(f"                {line}" for line in lines)
        docs.append(
            "apiVersion: trellis.dev/v1\nkind: ResourceTemplate\n"
            f"metadata: {{name: r{r}}}\nspec:\n  provider: custom\n  providerOptions:\n    custom:\n"
            "      tasks:\n        - name: use\n          type: script\n          options:\n"
            f"            script:\n              script: |\n{script}\n"
        )
        resources.append(f"    - {{name: r{r}}}")
    variables = [
        f"    - {{name: v{i}, valueType: text, options: {{required: true, sensitive: true}}}}" for i in range(count)
    ]
    docs.append(
        "apiVersion: trellis.dev/v1\nkind: EnvironmentTemplate\nmetadata: {name: many}\nspec:\n"
        "  resources:\n" + "\n".join(resources) + "\n  variables:\n" + "\n".join(variables) + "\n"
    )
    docs.append("apiVersion: trellis.dev/v1\nkind: Environment\nmetadata: {name: many-env}\nspec:\n"
                "  template: {name: many}\n")  # fmt: skip
    return "---\n".join(docs)


@pytest.mark.parametrize("count", [100, 1000])
def test_compile_time_with_sensitive_variables_sealed_vs_not(count: int) -> None:
    sources = [SourceFile(path="many.yaml", text=sensitive_template(count))]
    keys = MasterKeyring(new_master_key()).for_tenant("bench")
    plain = {f"v{i}": f"{SECRET}-{i}" for i in range(count)}
    tokens = {name: keys.seal(value) for name, value in plain.items()}
    compiler_seals = "seal" in inspect.signature(compile_bundle).parameters

    def compiled(variables: dict[str, str], **kwargs: Any) -> Workflow:
        result = compile_sources(sources, "many-env", variables, "deploy", **kwargs)
        assert result.workflow is not None, result.errors[:3]
        return result.workflow

    assert SECRET in msgspec.json.encode(compiled(plain)).decode()
    assert SECRET not in msgspec.json.encode(compiled(tokens)).decode()
    figures = {
        "clear, not sealed (a preview)": median_seconds(cold(lambda: compiled(plain))),
        "given as tokens (CLI, gateway)": median_seconds(cold(lambda: compiled(tokens))),
    }
    if compiler_seals:
        assert SECRET not in msgspec.json.encode(compiled(plain, seal=keys.seal)).decode()
        figures["clear, sealed by the compiler"] = median_seconds(cold(lambda: compiled(plain, seal=keys.seal)))
    base = figures["clear, not sealed (a preview)"]
    seal_each = median_seconds(lambda: [keys.seal(v) for v in plain.values()]) / count
    print(f"\ncompile {count // 10} resources reading {count} sensitive variables, CPU medians:")
    for what, seconds in figures.items():
        print(f"  {what:34} {seconds * 1000:7.1f} ms  ({seconds / base:.2f}x)")
    if not compiler_seals:
        print("  (this compiler takes no sealer: sealing at the source is not measured)")
    print(f"  one seal (AES-GCM, {len(SECRET)} chars): {seal_each * 1e6:.1f} us")
