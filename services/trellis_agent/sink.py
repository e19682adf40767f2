"""The log sink executors write to: masks secrets, batches by time and size, numbers chunks.

Chunks are sequence-numbered per activity attempt from 0 and published strictly in order; a chunk
whose publish fails stays queued and is retried on the next flush, so a short outage leaves no
gap. A publish failure never fails the activity: if the bus stays away, the oldest queued chunks
are dropped (readers see the gap in the sequence, and once the bus is back a system line says
which chunks were lost) and the command goes on. When the command has
ended, what is left is retried with backoff for `exit_flush_seconds` (as long as the terminal
event, which follows the last chunk, would be): a NATS cluster electing a new stream leader
after a node died refuses publishes for a few seconds, and the last lines must survive that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Literal

from trellis_core import sealed
from trellis_core.events import ActivityLogChunk, WorkItem
from trellis_core.logs import get_logger
from trellis_core.workflow import Activity, CheckoutSpec

LogStream = Literal["stdout", "stderr", "system"]
Publish = Callable[[ActivityLogChunk], Awaitable[None]]

MASK = sealed.MASK
MAX_PENDING_CHUNKS = 1024  # while the bus is away; older chunks are dropped (a visible gap)
EXIT_FLUSH_SECONDS = 120.0  # about what runner.publish_reliably gives the terminal event
EXIT_FLUSH_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
log = get_logger("agent.sink")
_MIN_SECRET_LEN = 3  # masking "a" or "1" everywhere would destroy the log and reveal nothing


def _forms_of(secret: str, encoded: bool) -> set[str]:
    """What to mask for one secret: itself (and its encoded forms when `encoded`), and each
    line of a multi-line one."""
    values: set[str] = set()
    if len(secret) >= _MIN_SECRET_LEN:
        values |= sealed.encoded_forms(secret) if encoded else {secret}
    if "\n" in secret:
        values.update(ln.strip() for ln in secret.splitlines() if len(ln.strip()) >= 4)
    return {v for v in values if len(v) >= _MIN_SECRET_LEN}


def _alternation(values: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(set(values), key=lambda v: (-len(v), v))  # longest first: no partial leftovers
    return re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None


class Masker:
    """Replaces every occurrence of any secret value (and of each line of a multi-line one).

    `secrets` are the values named sensitive (masked as they are); `opened` are the plain texts
    of the tokens the agent opened, masked with their encoded forms too (JSON-escaped,
    URL-encoded, base64 at every alignment: `sealed.encoded_forms`). One compiled alternation,
    longest form first, does the work; `longest` tells a streaming caller how much text to hold
    back so that a secret cut between two writes is still found (`mask_stream`).
    """

    def __init__(self, secrets: Iterable[str], opened: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            values |= _forms_of(secret, encoded=False)
        opened_forms: set[str] = set()
        for secret in opened:
            opened_forms |= _forms_of(secret, encoded=True)
        self._pattern = _alternation(values | opened_forms)
        self._opened = _alternation(opened_forms)
        self.longest = max((len(v) for v in values | opened_forms), default=0)

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def holds_opened(self, text: str) -> bool:
        """Whether `text` holds an opened secret (or one of its encoded forms)."""
        return self._opened is not None and self._opened.search(text) is not None

    def mask_stream(self, text: str) -> tuple[str, str]:
        """(masked text safe to publish now, raw tail to hold for the next write): the tail is
        short of the longest form, so any secret that ends beyond `text` starts in it."""
        if self._pattern is None:
            return text, ""
        cut = len(text) - (self.longest - 1)
        if cut <= 0:
            return "", text
        out: list[str] = []
        pos = 0
        for match in self._pattern.finditer(text):
            if match.start() >= cut:
                break
            out.append(text[pos : match.start()])
            out.append(MASK)
            pos = match.end()
        cut = max(cut, pos)
        out.append(text[pos:cut])
        return "".join(out), text[cut:]

    def mask_value(self, value: Any) -> Any:
        """Mask strings inside JSON-like values (outputs, reasons)."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask_value(v) for v in value]
        return value


def sensitive_values(activity: Activity) -> list[str]:
    """The values to mask: inputs and env entries named in `activity.sensitive`, git credentials."""
    names = set(activity.sensitive)
    found: list[str] = []
    for name in names:
        if name in activity.inputs:
            value = activity.inputs[name]
            found.append(value if isinstance(value, str) else json.dumps(value))
    env: dict[str, str] = getattr(activity.spec, "env", {})
    headers: dict[str, str] = getattr(activity.spec, "headers", {})
    for mapping in (env, headers):
        found.extend(v for k, v in mapping.items() if k in names)
    if isinstance(activity.spec, CheckoutSpec):
        found.extend(v for v in (activity.spec.password, activity.spec.ssh_key) if v)
    return found


def split_utf8(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` UTF-8 bytes, cut at line ends where a line fits."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        data = line.encode()
        while len(data) > limit:  # one line too long for a chunk: cut between characters
            cut = limit
            while cut > 0 and (data[cut] & 0xC0) == 0x80:
                cut -= 1
            head, data = data[:cut], data[cut:]
            if current:
                pieces.append("".join(current))
                current, size = [], 0
            pieces.append(head.decode())
        if size + len(data) > limit and current:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(data.decode())
        size += len(data)
    if current:
        pieces.append("".join(current))
    return pieces


class LogSink:
    """Buffered, masked, ordered log chunks of one activity attempt.

    Use as `async with LogSink(...) as sink:`; from the first write on it owns one flusher task
    that publishes whatever is buffered every `flush_seconds`, and it flushes the rest on exit
    (an activity that logs nothing costs no task).
    """

    def __init__(
        self,
        *,
        tenant: str,
        run_id: str,
        activity_id: str,
        attempt: int,
        publish: Publish,
        masker: Masker | None = None,
        flush_seconds: float = 0.25,
        chunk_bytes: int = 32 * 1024,
        exit_flush_seconds: float = EXIT_FLUSH_SECONDS,
    ) -> None:
        self._ids = (tenant, run_id, activity_id, attempt)
        self._exit_flush_seconds = exit_flush_seconds
        self._publish = publish
        self._masker = masker or Masker(())
        self._flush_seconds = flush_seconds
        self._chunk_bytes = chunk_bytes
        self._buffer: list[tuple[LogStream, str]] = []
        self._buffered = 0
        self._pending: list[ActivityLogChunk] = []
        self._sequence = 0
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._open = False  # inside `async with`: a write starts the flusher
        # Raw text held back (not yet masked) so a secret cut between two writes is still found:
        # shorter than the longest form to mask; released by a full flush, a write to another
        # stream, or a timer tick with no write since the last one.
        self._tail: tuple[LogStream, str] | None = None
        self._writes = 0
        self.dropped = 0
        self._lost: tuple[int, int] | None = None  # first and last sequence dropped, not yet said

    @classmethod
    def for_work(cls, work: WorkItem, publish: Publish, *, opened: Iterable[str] = (), **kwargs: Any) -> LogSink:
        """The sink of `work`'s attempt, masking its sensitive values and the `opened` plain texts."""
        return cls(
            tenant=work.tenant,
            run_id=work.run_id,
            activity_id=work.activity.id,
            attempt=work.attempt,
            publish=publish,
            masker=Masker(sensitive_values(work.activity), opened),
            **kwargs,
        )

    @property
    def masker(self) -> Masker:
        return self._masker

    @property
    def chunks_published(self) -> int:
        return self._sequence - len(self._pending) - self.dropped

    async def __aenter__(self) -> LogSink:
        self._open = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        deadline = time.monotonic() + self._exit_flush_seconds
        for attempt in itertools.count():
            if await self._try_flush():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(EXIT_FLUSH_BACKOFF[min(attempt, len(EXIT_FLUSH_BACKOFF) - 1)], left))
        log.warning("log_chunks_lost", activity=self._ids[2], chunks=len(self._pending))

    async def write(self, stream: LogStream, text: str) -> None:
        """Queue `text` (masked); publishes at once when the buffer reaches the chunk size."""
        if not text:
            return
        if self._flusher is None and self._open:
            self._flusher = asyncio.create_task(self._flush_periodically(), name="log-sink-flusher")
        self._writes += 1
        if not self._masker.active:
            await self._queue(stream, text)
            return
        if self._tail is not None and self._tail[0] != stream:
            self._release_tail()
        held = self._tail[1] if self._tail is not None else ""
        masked, rest = self._masker.mask_stream(held + text)
        self._tail = (stream, rest) if rest else None
        await self._queue(stream, masked)

    async def _queue(self, stream: LogStream, masked: str) -> None:
        if not masked:
            return
        for piece in split_utf8(masked, self._chunk_bytes):
            self._buffer.append((stream, piece))
            self._buffered += len(piece.encode())
            if self._buffered >= self._chunk_bytes:
                await self._try_flush(release=False)

    def _release_tail(self) -> None:
        """Mask and buffer the held tail as it is (nothing more of it is coming)."""
        if self._tail is None:
            return
        stream, text = self._tail
        self._tail = None
        for piece in split_utf8(self._masker.mask(text), self._chunk_bytes):
            self._buffer.append((stream, piece))
            self._buffered += len(piece.encode())

    async def _try_flush(self, *, release: bool = True) -> bool:
        """Flush; on failure keep (a bounded number of) chunks for later and report False."""
        try:
            await self.flush(release=release)
            return True
        except Exception as exc:
            excess = len(self._pending) - MAX_PENDING_CHUNKS
            if excess > 0:
                gone = (self._pending[0].sequence, self._pending[excess - 1].sequence)
                self._lost = gone if self._lost is None else (self._lost[0], gone[1])
                del self._pending[:excess]
                self.dropped += excess
                log.warning("log_chunks_dropped", activity=self._ids[2], dropped=excess, sequences=gone)
            log.warning("log_publish_failed", activity=self._ids[2], pending=len(self._pending), error=repr(exc))
            return False

    async def system(self, text: str) -> None:
        """A line from the agent itself (pulling an image, pod scheduled, attempt 2 …)."""
        await self.write("system", text if text.endswith("\n") else text + "\n")

    async def flush(self, *, release: bool = True) -> None:
        """Publish what is buffered; `release`: the held tail too (nothing can straddle it then)."""
        async with self._lock:
            if release:
                self._release_tail()
            self._pending.extend(self._chunks(self._take_buffer()))
            while self._pending:
                await self._publish(self._pending[0])
                self._pending.pop(0)
                if not self._pending and self._lost is not None:  # the bus is back: say what it cost
                    first, last = self._lost
                    self._lost = None
                    line = (
                        f"log chunks {first} to {last} of this attempt were lost: the bus was unreachable "
                        f"for longer than {MAX_PENDING_CHUNKS} chunks could wait for it\n"
                    )
                    self._pending.append(self._chunk("system", line))

    def _take_buffer(self) -> list[tuple[LogStream, str]]:
        buffer, self._buffer, self._buffered = self._buffer, [], 0
        return buffer

    def _chunks(self, buffer: list[tuple[LogStream, str]]) -> list[ActivityLogChunk]:
        """Group consecutive writes of one stream, split at `chunk_bytes`, number them."""
        chunks: list[ActivityLogChunk] = []
        current: LogStream | None = None
        parts: list[str] = []
        size = 0

        def close() -> None:
            nonlocal parts, size
            if parts and current is not None:
                chunks.append(self._chunk(current, "".join(parts)))
            parts, size = [], 0

        for stream, text in buffer:
            if stream != current or size + len(text.encode()) > self._chunk_bytes:
                close()
                current = stream
            parts.append(text)
            size += len(text.encode())
        close()
        return chunks

    def _chunk(self, stream: LogStream, data: str) -> ActivityLogChunk:
        tenant, run_id, activity_id, attempt = self._ids
        chunk = ActivityLogChunk(
            tenant=tenant,
            run_id=run_id,
            activity_id=activity_id,
            attempt=attempt,
            sequence=self._sequence,
            stream=stream,
            data=data,
        )
        self._sequence += 1
        return chunk

    async def _flush_periodically(self) -> None:
        # Until closed, not only until cancelled: a cancel that lands as a publish completes can be
        # lost (asyncio.wait_for before Python 3.12 returns the result instead), and the exit
        # would then wait on this loop for ever.
        seen = -1
        while self._open:
            await asyncio.sleep(self._flush_seconds)
            # A tail held through a whole tick with no write after it is released: the command
            # paused, and its last line should not wait for the next one.
            stale = self._writes == seen
            seen = self._writes
            await self._try_flush(release=stale)
