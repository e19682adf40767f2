"""The gateway's Prometheus metrics, kept in memory and written in the text exposition format
(version 0.0.4) by hand: three metric families do not justify a client library.

Requests are counted by method, route template (never the raw path: bounded label values) and
status; their durations go into one histogram; `sse_clients` is a gauge the streaming routes move
with `with metrics.sse_client(): ...`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a cached auth hit to a slow store query; SSE streams land in +Inf.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # the last is +Inf
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class Metrics:
    """Counters, a duration histogram per (method, route) and the gauges, for `/metrics`."""

    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (method, route, status)
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    sse_clients: int = 0
    auth_cache_hits: int = 0
    auth_cache_misses: int = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get((method, route))
        if histogram is None:
            histogram = self.durations[(method, route)] = Histogram()
        histogram.observe(seconds)

    @contextmanager
    def sse_client(self) -> Iterator[None]:
        """Count one open server-sent-events stream while the block runs."""
        self.sse_clients += 1
        try:
            yield
        finally:
            self.sse_clients -= 1

    def render(self) -> str:
        lines = [
            "# HELP trellis_gateway_requests_total HTTP requests answered, by method, route and status.",
            "# TYPE trellis_gateway_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            labels = _labels(method=method, route=route, status=str(status))
            lines.append(f"trellis_gateway_requests_total{{{labels}}} {count}")
        lines += [
            "# HELP trellis_gateway_request_duration_seconds Time to answer a request (to its last byte).",
            "# TYPE trellis_gateway_request_duration_seconds histogram",
        ]
        for (method, route), histogram in sorted(self.durations.items()):
            lines += _histogram_lines("trellis_gateway_request_duration_seconds", histogram, method, route)
        lines += [
            "# HELP trellis_gateway_sse_clients Server-sent-event streams open now.",
            "# TYPE trellis_gateway_sse_clients gauge",
            f"trellis_gateway_sse_clients {self.sse_clients}",
            "# HELP trellis_gateway_auth_cache_total Bearer token checks, by whether the cache answered.",
            "# TYPE trellis_gateway_auth_cache_total counter",
            f'trellis_gateway_auth_cache_total{{result="hit"}} {self.auth_cache_hits}',
            f'trellis_gateway_auth_cache_total{{result="miss"}} {self.auth_cache_misses}',
        ]
        return "\n".join(lines) + "\n"


def _histogram_lines(name: str, histogram: Histogram, method: str, route: str) -> list[str]:
    out: list[str] = []
    cumulative = 0
    bounds = [*(_number(b) for b in histogram.buckets), "+Inf"]
    for bound, count in zip(bounds, histogram.counts, strict=True):
        cumulative += count
        out.append(f"{name}_bucket{{{_labels(method=method, route=route, le=bound)}}} {cumulative}")
    labels = _labels(method=method, route=route)
    out.append(f"{name}_sum{{{labels}}} {_number(histogram.total)}")
    out.append(f"{name}_count{{{labels}}} {histogram.count}")
    return out


def _number(value: float) -> str:
    return repr(float(value))


def _labels(**labels: str) -> str:
    return ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
