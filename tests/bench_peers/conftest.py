"""`make bench-peers`: the stack's stream storage, the report the benchmarks fill in, and the table
printed once at the end of the session.

BENCH_PEERS_STORAGE=file (the default: JetStream file streams, as `trellis dev up` runs them, and
Temporal's dev server on an SQLite file) or memory (memory streams, as `make bench` runs, and Temporal's
default in-memory SQLite)."""

from __future__ import annotations

import os

import pytest
from peers_report import Report

from trellis_core.settings import Settings

STORAGE = os.environ.get("BENCH_PEERS_STORAGE", "file")
_REPORT = pytest.StashKey[Report]()


@pytest.fixture(scope="session")
def settings(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    if STORAGE not in ("file", "memory"):
        raise pytest.UsageError(f"BENCH_PEERS_STORAGE={STORAGE!r}: file or memory")
    return Settings.from_env(
        {},
        nats_url=nats_url,
        data_dir=tmp_path_factory.mktemp("data"),
        stream_storage=STORAGE,
        log_format="json",
        log_level="warning",
    )


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Report:
    return request.config.stash.setdefault(_REPORT, Report(storage=STORAGE))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None or not (report.trellis or report.temporal or report.replicas or report.not_measured):
        return
    terminalreporter.section("Trellis and Temporal side by side")
    for line in report.lines():
        terminalreporter.write_line(line)
