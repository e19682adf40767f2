"""make bench-peers's arithmetic and goal marks, in `make test` (no engine, no clock)."""

from __future__ import annotations

import pytest
from peers_report import CHAIN, LAYERS, SHAPES, Figures, Report, hops, layers, percentile

LOAD = (1.0, 0.5, 0.25)


def test_both_engines_run_the_same_two_shapes() -> None:
    chain = SHAPES[CHAIN]
    assert len(chain) == 200
    assert chain["c0"] == []
    assert all(chain[f"c{i}"] == [f"c{i - 1}"] for i in range(1, 200))
    grid = SHAPES[LAYERS]
    assert len(grid) == 1000
    assert sum(1 for parents in grid.values() if not parents) == 20
    assert grid["n3x19"] == ["n2x19", "n2x0"]  # its own column and its right neighbour's, wrapping
    seen: set[str] = set()
    for a, parents in grid.items():  # topological order: the Temporal workflow relies on it
        assert set(parents) <= seen
        seen.add(a)


def test_a_hop_runs_from_the_last_dependency_completed_to_the_start() -> None:
    dag = {"a": [], "b": [], "c": ["a", "b"]}
    completed = {"a": 10.0, "b": 10.004}
    assert hops(dag, {"a": 9.0, "b": 9.0, "c": 10.0065}, completed) == [pytest.approx(2.5)]


def test_figures_and_percentiles() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile(list(map(float, range(101))), 99) == 99.0
    dag = {"a": [], "b": ["a"], "c": ["b"]}
    started, completed = {"a": 0.0, "b": 0.003, "c": 0.010}, {"a": 0.001, "b": 0.004, "c": 0.011}
    f = Figures.of(dag, started, completed, 0.5, LOAD, cpu=(0.0, 0.2, 0.01))
    assert (f.hop_p50_ms, f.rate, f.load, f.cpu) == (pytest.approx(4.0), 6.0, LOAD, (0.2, 0.01, 0.0))


def _f(p50: float, rate: float, load: float = 1.0, cpu: tuple[float, ...] = ()) -> Figures:
    return Figures(p50, p50 * 3, rate, 1.0, (load, 0.5, 0.25), cpu)


def test_rounds_reduce_to_each_figures_median() -> None:
    m = Figures.median(
        [_f(2.0, 300.0, 4.0, (1.0, 0.0)), _f(9.0, 100.0, 5.0, (3.0, 0.1)), _f(3.0, 200.0, 6.0, (2.0, 0.0))]
    )
    assert (m.hop_p50_ms, m.hop_p99_ms, m.rate, m.load[0], m.cpu) == (3.0, 9.0, 200.0, 4.0, (2.0, 0.0))


def test_the_table_marks_each_goal_met_or_missed_and_says_what_was_not_measured() -> None:
    report = Report(storage="memory")
    report.trellis = {CHAIN: [_f(2.0, 300.0), _f(1.0, 500.0), _f(5.0, 100.0)], LAYERS: [_f(10.0, 1000.0)]}
    report.temporal = {CHAIN: [_f(60.0, 12.0)] * 3, LAYERS: [_f(180.0, 70.0)]}
    report.replicas = {1: [_f(10.0, 1000.0, cpu=(0.9,))], 3: [_f(10.0, 1000.0, cpu=(0.9, 0.01, 0.0))]}
    text = "\n".join(report.lines())
    assert "storage: memory; median of 3 round(s) each" in text
    assert "30.0x  >= 25x: met" in text  # the chain's hop p50: 60 / 2 (the median of 2, 1 and 5)
    assert "Trellis 100-500/s, load 1.0; Temporal 12/s, load 1.0" in text  # each round's throughput
    assert "18.0x  >= 25x: MISSED" in text  # the layers' hop p50: 180 / 10
    assert "14.3x  >= 20x: MISSED" in text  # the layers' throughput: 1000 / 70
    assert "busiest first: 0.90, 0.01, 0.00" in text
    assert "3 vs 1 replica: 1.00x, goal >= 1.5x: MISSED" in text
    assert "10 environments, 6 partitions" in text

    report = Report(trellis={CHAIN: [_f(2.0, 300.0)]}, not_measured={"Temporal": "exited with 1"})
    lines = report.lines()
    assert any(line.startswith(CHAIN) and line.endswith("not measured") for line in lines)
    assert lines[-1] == "not measured: Temporal: exited with 1"


def test_layers_can_take_another_size() -> None:
    assert len(layers(4, 3)) == 12
