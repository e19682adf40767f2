"""The log sink batches by size and time, numbers chunks from 0 and never leaves a gap."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from typing import Any

import pytest
from agent_support import ChunkCollector, work_item

from trellis_agent.executors.base import MAX_PARTIAL_LINE, pump_lines
from trellis_agent.sink import LogSink, Masker
from trellis_core import sealed
from trellis_core.events import ActivityLogChunk
from trellis_core.workflow import CheckoutSpec


async def test_a_full_buffer_is_published_at_once_in_chunks_no_larger_than_the_limit() -> None:
    collector = ChunkCollector()
    sink = LogSink.for_work(work_item(), collector, flush_seconds=3600, chunk_bytes=300)
    for i in range(100):
        await sink.write("stdout", f"line {i:04d}\n")
    assert collector.chunks, "the size limit publishes without waiting for the timer"
    await sink.flush()
    assert all(len(c.data.encode()) <= 300 for c in collector.chunks)
    assert [c.sequence for c in collector.chunks] == list(range(len(collector.chunks)))
    assert collector.text() == "".join(f"line {i:04d}\n" for i in range(100))


async def test_the_timer_publishes_a_small_write_without_an_explicit_flush() -> None:
    collector = ChunkCollector()
    published = asyncio.Event()

    async def publish(chunk: ActivityLogChunk) -> None:
        await collector(chunk)
        published.set()

    async with LogSink.for_work(work_item(), publish, flush_seconds=0.05) as sink:
        await sink.write("stdout", "hello\n")
        async with asyncio.timeout(5):
            await published.wait()
    assert collector.text() == "hello\n"


async def test_a_stream_switch_starts_a_new_chunk() -> None:
    collector = ChunkCollector()
    async with LogSink.for_work(work_item(), collector, flush_seconds=3600) as sink:
        await sink.write("stdout", "a\n")
        await sink.write("stdout", "b\n")
        await sink.write("stderr", "c\n")
        await sink.system("d")
    assert [(c.sequence, c.stream, c.data) for c in collector.chunks] == [
        (0, "stdout", "a\nb\n"),
        (1, "stderr", "c\n"),
        (2, "system", "d\n"),
    ]


async def test_a_failed_publish_keeps_the_chunk_and_its_sequence_for_the_next_flush() -> None:
    collector = ChunkCollector()
    failures = [True]

    async def flaky(chunk: ActivityLogChunk) -> None:
        if failures and failures.pop():
            raise ConnectionError("bus away")
        await collector(chunk)

    sink = LogSink.for_work(work_item(), flaky, flush_seconds=3600)
    await sink.write("stdout", "first\n")
    with pytest.raises(ConnectionError, match="bus away"):  # flush() reports it; writers never see it
        await sink.flush()
    assert collector.chunks == []
    assert sink.chunks_published == 0
    await sink.write("stdout", "second\n")
    await sink.flush()
    assert [(c.sequence, c.data) for c in collector.chunks] == [(0, "first\n"), (1, "second\n")]
    assert sink.chunks_published == 2


async def test_the_last_chunks_wait_out_a_bus_away_for_a_while_when_the_command_ends() -> None:
    """A cluster electing a stream leader refuses publishes for seconds: the last chunks are
    retried with backoff, not given up after a few tries (the failover test loses none)."""
    collector = ChunkCollector()
    refusals = [True] * 5  # more than the three quick tries of old

    async def electing(chunk: ActivityLogChunk) -> None:
        if refusals:
            refusals.pop()
            raise ConnectionError("no stream leader yet")
        await collector(chunk)

    async with LogSink.for_work(work_item(), electing, flush_seconds=3600) as sink:
        await sink.write("stdout", "the last line\n")
    assert [(c.sequence, c.data) for c in collector.chunks] == [(0, "the last line\n")]
    assert sink.dropped == 0


def test_the_masker_hides_every_line_of_a_multi_line_secret_and_ignores_tiny_values() -> None:
    key = "-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----"
    masker = Masker([key, "ab"])
    assert masker.mask(f"got {key}") == "got ********"
    assert masker.mask("line AAAABBBBCCCC here, ab stays") == "line ******** here, ab stays"


async def test_git_credentials_are_masked_without_being_named_sensitive() -> None:
    collector = ChunkCollector()
    work = work_item(CheckoutSpec(url="https://git.example/x.git", password="hunter22"))
    async with LogSink.for_work(work, collector) as sink:
        await sink.write("stderr", "fatal: https://user:hunter22@git.example\n")
    assert collector.text() == "fatal: https://user:********@git.example\n"


def test_long_text_is_split_at_line_ends_and_between_characters() -> None:
    from trellis_agent.sink import split_utf8

    assert split_utf8("aa\nbb\ncc\n", 6) == ["aa\nbb\n", "cc\n"]
    pieces = split_utf8("é" * 10, 5)
    assert "".join(pieces) == "é" * 10
    assert all(len(p.encode()) <= 5 for p in pieces)


async def test_a_bus_that_stays_away_never_fails_the_writer_and_drops_the_oldest_chunks() -> None:
    async def down(chunk: ActivityLogChunk) -> None:
        raise ConnectionError("bus away")

    sink = LogSink.for_work(work_item(), down, flush_seconds=3600, chunk_bytes=256, exit_flush_seconds=0.5)
    async with sink:
        for i in range(2000):
            await sink.write("stdout", f"{i:0200d}\n")
    assert sink.dropped > 0
    assert sink.chunks_published == 0


async def test_chunks_dropped_while_the_bus_was_away_are_named_in_a_system_line_once_it_is_back() -> None:
    collector = ChunkCollector()
    away = True

    async def flaky(chunk: ActivityLogChunk) -> None:
        if away:
            raise ConnectionError("bus away")
        await collector(chunk)

    sink = LogSink.for_work(work_item(), flaky, flush_seconds=3600, chunk_bytes=256, exit_flush_seconds=5)
    async with sink:
        for i in range(1100):
            await sink.write("stdout", f"{i:0200d}\n")
        away = False
        await sink.write("stdout", "after\n")
    assert sink.dropped > 0
    published = [c.sequence for c in collector.chunks]
    assert published == sorted(published)
    lost = sorted(set(range(published[-1] + 1)) - set(published))
    assert len(lost) == sink.dropped
    said = [c for c in collector.chunks if c.stream == "system"]
    assert [c.data for c in said] == [
        f"log chunks {lost[0]} to {lost[-1]} of this attempt were lost: the bus was unreachable "
        "for longer than 1024 chunks could wait for it\n"
    ]
    assert said[0].sequence == published[-1]  # after everything that was kept


SECRET = "s3cr3t-Pa55word/with+chars"


def opened_sink(collector: ChunkCollector, **kwargs: Any) -> LogSink:
    return LogSink.for_work(work_item(), collector, opened={SECRET}, **kwargs)


async def test_an_opened_secret_cut_between_two_writes_is_still_masked() -> None:
    collector = ChunkCollector()
    async with opened_sink(collector, flush_seconds=3600, chunk_bytes=64) as sink:
        for cut in range(1, len(SECRET)):
            await sink.write("stdout", f"pw={SECRET[:cut]}")
            await sink.write("stdout", f"{SECRET[cut:]} end\n")
    text = collector.text()
    assert SECRET not in text
    assert "s3cr3t" not in text
    assert text == "pw=******** end\n" * (len(SECRET) - 1)
    assert all(len(c.data.encode()) <= 64 for c in collector.chunks)


async def test_encoded_forms_of_an_opened_secret_are_masked_at_any_alignment() -> None:
    collector = ChunkCollector()
    raw = SECRET.encode()
    async with opened_sink(collector, flush_seconds=3600) as sink:
        for prefix in ("", "a", "ab"):
            await sink.write("stdout", base64.b64encode(prefix.encode() + raw + b"!").decode() + "\n")
        await sink.write("stdout", json.dumps({"pw": SECRET}) + "\n")
        await sink.write("stdout", urllib.parse.quote_plus(SECRET) + "\n")
    text = collector.text()
    for form in sealed.encoded_forms(SECRET):
        assert form not in text
    assert text.count("********") >= 5


async def test_a_secret_straddling_two_16k_line_pieces_of_a_command_is_masked() -> None:
    collector = ChunkCollector()
    line = ("x" * (MAX_PARTIAL_LINE - 5) + SECRET + "y" * 40000 + "\n").encode()
    blocks = [line[i : i + 4096] for i in range(0, len(line), 4096)]

    async def read(_: int) -> bytes:
        return blocks.pop(0) if blocks else b""

    async with opened_sink(collector, flush_seconds=3600, chunk_bytes=8 * 1024) as sink:
        await pump_lines(read, "stdout", sink)
    text = collector.text()
    assert SECRET not in text
    assert "********" in text
    assert text == "x" * (MAX_PARTIAL_LINE - 5) + "********" + "y" * 40000 + "\n"
    assert len(collector.chunks) > 2


async def test_a_held_tail_goes_out_with_the_timer_once_the_command_pauses() -> None:
    collector = ChunkCollector()
    async with opened_sink(collector, flush_seconds=0.02) as sink:
        await sink.write("stdout", "prompt> ")
        async with asyncio.timeout(5):
            while collector.text() != "prompt> ":  # noqa: ASYNC110 - the sink offers no event
                await asyncio.sleep(0.01)
        await sink.write("stdout", f"{SECRET}\n")
    assert collector.text() == "prompt> ********\n"


@pytest.mark.bench
async def test_sink_throughput_with_and_without_masking() -> None:
    """About 64 MiB of log lines, plain and masking one opened secret's forms plus named values."""
    line = "2026-12-01T09:00:00Z INFO building layer 42 of the image, nothing secret here at all\n"
    block = line * 200

    async def measure(sink: LogSink) -> float:
        start = time.perf_counter()
        async with sink:
            for _ in range(4000):
                await sink.write("stdout", block)
        return len(block) * 4000 / (time.perf_counter() - start) / 2**20

    async def drop(chunk: ActivityLogChunk) -> None:
        return None

    plain = await measure(LogSink.for_work(work_item(), drop, flush_seconds=3600))
    masked = await measure(
        LogSink.for_work(
            work_item(inputs={"k": "named-value-1"}, sensitive=("k",)), drop, opened={SECRET}, flush_seconds=3600
        )
    )
    print(f"\nsink throughput: plain {plain:.0f} MiB/s, masking {masked:.0f} MiB/s")
    # Ratios, not absolute speeds: the machine is shared. Typical here: 59 and 33 MiB/s.
    assert masked > plain / 5, "masking costs more than it should"
    assert masked > 5, "masking must keep the sink far ahead of any command's output"
