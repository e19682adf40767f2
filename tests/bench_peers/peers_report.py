"""The shapes `make bench-peers` runs on both engines, the figures it takes and the table it prints.

Pure code (no engine, no clock) so that `make test` checks the arithmetic and the goal marks."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Goals from issue 20: Trellis's hop p50 at least 25x shorter than Temporal's, its throughput at
# least 20x higher, and three scheduler replicas at least 1.5x one replica's throughput.
HOP_GOAL = 25.0
RATE_GOAL = 20.0
REPLICAS_GOAL = 1.5

CHAIN = "chain of 200"
LAYERS = "1,000 in layers of 20"

Dag = dict[str, list[str]]  # activity id -> the ids it depends on, in topological order


def chain(n: int = 200) -> Dag:
    return {f"c{i}": [f"c{i - 1}"] if i else [] for i in range(n)}


def layers(width: int = 20, depth: int = 50) -> Dag:
    """`depth` layers of `width`; each activity depends on two of the layer above it (the one
    in its column and its right neighbour's, wrapping), the shape of `make bench`'s DAG."""
    return {
        f"n{d}x{w}": [f"n{d - 1}x{w}", f"n{d - 1}x{(w + 1) % width}"] if d else []
        for d in range(depth)
        for w in range(width)
    }


SHAPES: dict[str, Dag] = {CHAIN: chain(), LAYERS: layers()}
# The replicas' load: 1,000 activities as 10 runs of 5 layers of 20, each run in its own environment,
# so that scheduler partitions (hashed by tenant and environment) spread it over the replicas.
SPREAD = "1,000 as 10 runs of 5 layers of 20, 10 environments"
SPREAD_RUNS = 10
SPREAD_DAG: Dag = layers(20, 5)
SPREAD_PARTITIONS = 6


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def hops(dag: Mapping[str, Sequence[str]], started: Mapping[str, float], completed: Mapping[str, float]) -> list[float]:
    """Per activity with dependencies: its start minus its last dependency's completion, in ms
    (times in seconds, all from the clock of the one machine both engines run on)."""
    return [(started[a] - max(completed[p] for p in parents)) * 1000 for a, parents in dag.items() if parents]


@dataclass(frozen=True)
class Figures:
    """One run's figures, or the medians of several (`median`)."""

    hop_p50_ms: float
    hop_p99_ms: float
    rate: float  # activities per second, from the run's start to its completion
    span_s: float
    load: tuple[float, float, float]  # the load average just before the measurement
    cpu: tuple[float, ...] = ()  # Trellis: each scheduler replica's CPU seconds during the run, busiest first

    @classmethod
    def of(
        cls,
        dag: Mapping[str, Sequence[str]],
        started: Mapping[str, float],
        completed: Mapping[str, float],
        span_s: float,
        load: tuple[float, float, float],
        cpu: Sequence[float] = (),
    ) -> Figures:
        gaps = hops(dag, started, completed)
        busiest_first = tuple(sorted(cpu, reverse=True))
        return cls(statistics.median(gaps), percentile(gaps, 99), len(dag) / span_s, span_s, load, busiest_first)

    @classmethod
    def median(cls, rounds: Sequence[Figures]) -> Figures:
        """Each figure's median over the rounds; the load before the first."""
        med = statistics.median
        cpu = tuple(med(f.cpu[i] for f in rounds) for i in range(min(len(f.cpu) for f in rounds)))
        return cls(
            med(f.hop_p50_ms for f in rounds),
            med(f.hop_p99_ms for f in rounds),
            med(f.rate for f in rounds),
            med(f.span_s for f in rounds),
            rounds[0].load,
            cpu,
        )


def _mark(ratio: float, goal: float) -> str:
    return f">= {goal:g}x: {'met' if ratio >= goal else 'MISSED'}"


def _range(values: Sequence[float], fmt: str = ".0f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}" if x < 100 else f"{x:.0f}"


@dataclass
class Report:
    """Every round's figures: engine's shapes, and the layered run by number of scheduler replicas."""

    storage: str = "file"
    trellis: dict[str, list[Figures]] = field(default_factory=dict)
    temporal: dict[str, list[Figures]] = field(default_factory=dict)
    replicas: dict[int, list[Figures]] = field(default_factory=dict)
    not_measured: dict[str, str] = field(default_factory=dict)  # what -> why

    def lines(self) -> list[str]:
        rounds = max((len(r) for d in (self.trellis, self.temporal) for r in d.values()), default=0)
        out = [
            f"Trellis vs Temporal on this machine (storage: {self.storage}; median of {rounds} round(s) each); "
            "ratio: how many times Trellis is better",
            f"{'shape':<24}{'figure':<14}{'Trellis':>12}{'Temporal':>12}{'ratio':>9}  goal",
        ]
        for shape in SHAPES:
            ours, theirs = self.trellis.get(shape, []), self.temporal.get(shape, [])
            mine, other = (Figures.median(r) if r else None for r in (ours, theirs))
            rows = [
                ("hop p50 ms", "hop_p50_ms", True, HOP_GOAL),
                ("hop p99 ms", "hop_p99_ms", True, None),
                ("activities/s", "rate", False, RATE_GOAL if shape == LAYERS else None),
            ]
            for label, attr, lower_is_better, goal in rows:
                a = getattr(mine, attr) if mine else None
                b = getattr(other, attr) if other else None
                ratio = None if a is None or b is None or min(a, b) <= 0 else (b / a if lower_is_better else a / b)
                mark = "" if goal is None else "not measured" if ratio is None else _mark(ratio, goal)
                ratio_cell = f"{ratio:.1f}x" if ratio is not None else "-"
                out.append(f"{shape:<24}{label:<14}{_num(a):>12}{_num(b):>12}{ratio_cell:>9}  {mark}".rstrip())
            spread = [f"{who} {_range([f.rate for f in r])}/s, load {_range([f.load[0] for f in r], '.1f')}"
                      for who, r in (("Trellis", ours), ("Temporal", theirs)) if r]  # fmt: skip
            if spread:
                out.append(f"{'':<24}{'rounds':<14}{'; '.join(spread)}")
        if self.replicas:
            out.append(
                f"scheduler replicas, {SPREAD}, {SPREAD_PARTITIONS} partitions (rounds alternate 1 and 3 replicas):"
            )
            for n, r in sorted(self.replicas.items()):
                m = Figures.median(r)
                rates, loads = _range([f.rate for f in r]), _range([f.load[0] for f in r], ".1f")
                cpu = ", ".join(f"{c:.2f}" for c in m.cpu)
                out.append(
                    f"  {n} replica{'s' if n > 1 else ' '}: {m.rate:>6.0f} activities/s (rounds {rates}, load {loads});"
                    f" scheduler CPU s per replica, busiest first: {cpu}"
                )
            if self.replicas.get(1) and self.replicas.get(3):
                ratio = Figures.median(self.replicas[3]).rate / Figures.median(self.replicas[1]).rate
                out.append(f"  3 vs 1 replica: {ratio:.2f}x, goal {_mark(ratio, REPLICAS_GOAL)}")
        for what, why in self.not_measured.items():
            out.append(f"not measured: {what}: {why}")
        return out
