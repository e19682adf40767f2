"""The log sink batches by size and time, numbers chunks from 0 and never leaves a gap."""

from __future__ import annotations

import asyncio

import pytest
from agent_support import ChunkCollector, work_item

from trellis_agent.sink import LogSink, Masker
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

    sink = LogSink.for_work(work_item(), down, flush_seconds=3600, chunk_bytes=256)
    async with sink:
        for i in range(2000):
            await sink.write("stdout", f"{i:0200d}\n")
    assert sink.dropped > 0
    assert sink.chunks_published == 0
