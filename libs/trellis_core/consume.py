"""The one fetch loop every consumer runs, and the ack / nak / dead-letter choice as a pure function.

`admit` and `choose` decide from the delivery count, `max_deliver` and what handling the
message came to; `fetch_loop` pulls batches (up to the free slots, when slots are shared);
`settle` takes one message through admit -> decode -> handle -> choose and carries the choice out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg

from trellis_core.errors import TrellisError

T = TypeVar("T")


class PermanentError(TrellisError):
    """Raised by a handler for a message that can never succeed: dead-letter it at once."""


# ---- what handling one message came to ----------------------------------------------------------


@dataclass(frozen=True)
class Handled:
    """The handler returned: its effect is durable."""


@dataclass(frozen=True)
class Undecodable:
    error: str


@dataclass(frozen=True)
class Rejected:
    """The message can never succeed (a `PermanentError`, a refused field)."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """The handler raised: it may succeed on another delivery."""

    error: str


Outcome = Handled | Undecodable | Rejected | Failed


# ---- what to do with the message ---------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Nak:
    delay: float


@dataclass(frozen=True)
class Park:
    """Dead-letter the message with why, and end its delivery."""

    reason: str


Choice = Ack | Nak | Park


def delivery(msg: Msg) -> tuple[int, int]:
    """A JetStream message's delivery count and stream sequence, read off its ack subject
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`, or with the domain and account
    hash tokens after `ACK`); nats-py's `msg.metadata` parses every token, the timestamp too,
    which costs a consumer of thousands of events a second more than handling them."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[:2] == ["$JS", "ACK"]:
        return int(tokens[4]), int(tokens[5])
    if len(tokens) >= 12 and tokens[:2] == ["$JS", "ACK"]:
        return int(tokens[6]), int(tokens[7])
    meta = msg.metadata
    return meta.num_delivered, meta.sequence.stream


def admit(deliveries: int, max_deliver: int) -> Park | None:
    """Before decoding: a message delivered more than `max_deliver` times is parked unread
    (whatever killed its earlier deliveries may kill this one too)."""
    if deliveries > max_deliver:
        return Park(f"delivered {deliveries} times without an ack")
    return None


def choose(deliveries: int, max_deliver: int, outcome: Outcome, backoff: Sequence[float]) -> Choice:
    """After handling: ack, retry after the backoff step of this delivery, or dead-letter."""
    match outcome:
        case Handled():
            return Ack()
        case Undecodable(error):
            return Park(f"undecodable: {error}")
        case Rejected(reason):
            return Park(f"rejected: {reason}")
        case Failed(error):
            if deliveries >= max_deliver:
                return Park(f"failed {deliveries} times, last: {error}")
            return Nak(backoff[min(max(deliveries, 1) - 1, len(backoff) - 1)])


def decode_error(exc: Exception) -> str:
    """Why a payload could not be decoded; not only msgspec's errors (JSON nested a thousand
    deep raises RecursionError, even inside a field the type does not have)."""
    if isinstance(exc, msgspec.MsgspecError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# ---- carrying a choice out ----------------------------------------------------------------------

Parking = Callable[[Msg, str], Awaitable[None]]  # writes the dead letter of a message


async def carry_out(msg: Msg, choice: Choice, *, park: Parking, log: Any) -> None:
    """Ack, nak or dead-letter `msg`. A dead letter that cannot be written leaves the message
    to be delivered again (naked), so it is parked on a later delivery, not lost."""
    match choice:
        case Ack():
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
        case Nak(delay):
            log.info("message_retried", subject=msg.subject, deliveries=delivery(msg)[0], retry_in=delay)
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=delay)
        case Park(reason):
            try:
                await park(msg, reason)
            except Exception as exc:  # the bus is down or refuses the letter: try on a later delivery
                log.error("dead_letter_failed", subject=msg.subject, reason=reason, error=repr(exc))
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=5.0)
                return
            log.error("message_dead_lettered", subject=msg.subject, deliveries=delivery(msg)[0], reason=reason)


@dataclass(frozen=True)
class Settling:
    """How one consumer settles each message it fetched."""

    max_deliver: int
    backoff: tuple[float, ...]
    park: Parking
    log: Any


async def settle(
    msg: Msg, decode: Callable[[bytes], T], handle: Callable[[T, Msg], Awaitable[None]], how: Settling
) -> None:
    """admit -> decode -> handle -> choose, then carry the choice out. Never raises but on
    cancellation (then the message is handed back)."""
    deliveries, _ = delivery(msg)
    choice: Choice | None = admit(deliveries, how.max_deliver)
    if choice is None:
        outcome = await _outcome(msg, decode, handle, how.log)
        choice = choose(deliveries, how.max_deliver, outcome, how.backoff)
    await carry_out(msg, choice, park=how.park, log=how.log)


async def _outcome(
    msg: Msg, decode: Callable[[bytes], T], handle: Callable[[T, Msg], Awaitable[None]], log: Any
) -> Outcome:
    try:
        value = decode(msg.data)
    except Exception as exc:
        return Undecodable(decode_error(exc))
    try:
        await handle(value, msg)
    except asyncio.CancelledError:
        with contextlib.suppress(nats.errors.Error):
            await msg.nak()
        raise
    except PermanentError as exc:
        return Rejected(str(exc))
    except Exception as exc:
        log.warning("handler_failed", subject=msg.subject, error=repr(exc), exc_info=exc)
        return Failed(repr(exc))
    return Handled()


# ---- the fetch loop -----------------------------------------------------------------------------


class Fetcher(Protocol):
    """What the loop needs of a pull subscription (nats-py's `PullSubscription`)."""

    async def fetch(self, batch: int, timeout: float) -> list[Msg]: ...  # noqa: ASYNC109 - nats-py's


class Slots:
    """`size` work slots that fetch loops share: a loop fetches only while a slot is free, as many
    messages as are free, and each message it keeps holds a slot until its work is done (a slot
    freed twice raises). A loop waiting on an empty fetch holds no slot, so two loops sharing one
    (an agent's pool and pinned subjects) never keep each other waiting."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"slots: size must be at least 1, not {size}")
        self.size = size
        self.held = 0  # by running work
        self._freed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.size - self.held

    async def wait_free(self, wait: float) -> int:
        """Wait up to `wait` until a slot is free, without taking it: how many are (0: none came)."""
        try:
            async with asyncio.timeout(wait):
                while not self.free:
                    self._freed.clear()
                    await self._freed.wait()
        except TimeoutError:
            return 0
        return self.free

    def take_free(self, most: int) -> int:
        """Take up to `most` of the slots free now (never waits)."""
        taken = max(0, min(most, self.free))
        self.held += taken
        return taken

    def give_back(self, count: int = 1) -> None:
        if count > self.held:
            raise ValueError(f"slots released too many times: {count} given back, {self.held} held")
        self.held -= count
        self._freed.set()


Deliver = Callable[[list[Msg], int], Awaitable[None]]


async def fetch_loop(
    sub: Fetcher,
    stop: asyncio.Event,
    deliver: Deliver,
    *,
    batch: int,
    log: Any,
    slots: Slots | None = None,
    wait: float = 0.5,
    finish_fetched: bool = False,
) -> None:
    """Fetch until `stop` is set (or the connection closes), handing each batch to
    `deliver(msgs, owned)`: the first `owned` messages hold a slot each, to give back when done.
    A batch that arrives once `stop` is set is handed back (nak), or delivered with
    `finish_fetched` (a consumer that may still handle it: a nak is lost if the server stops
    before it redelivers, and the message then waits out the whole ack wait).

    Without `slots` every fetch asks for `batch`. With them, a loop fetches only while a slot is
    free and asks for twice what its last fetch brought (one after an empty fetch), up to `batch`
    and the free slots: a busy loop soon fetches for every free slot, an idle one asks for one.
    What arrives takes the slots free then; a message for which none is left (another loop
    sharing the slots filled the last one meanwhile) is handed back at once (nak), so another
    consumer of its durable, or this loop once a slot frees, runs it."""
    want = 1
    while not stop.is_set():
        raise_if_cancelled()
        asked = batch
        if slots is not None:
            free = await slots.wait_free(wait)
            if not free:
                continue
            asked = min(batch, want, free)
        msgs: list[Msg] = []
        try:
            msgs = await sub.fetch(asked, timeout=wait)
        except (TimeoutError, nats.errors.TimeoutError):  # a batch fetch raises the builtin one
            pass
        except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
            return
        except nats.errors.Error as exc:
            log.warning("fetch_failed", error=str(exc))
            await asyncio.sleep(wait)
        if msgs and stop.is_set() and not finish_fetched:  # the term ended while it waited: not ours
            await _hand_back(msgs)
            return
        owned = len(msgs)
        if slots is not None and msgs:
            owned = slots.take_free(len(msgs))
            await _hand_back(msgs[owned:])
            msgs = msgs[:owned]
        if msgs:
            await deliver(msgs, owned)
        want = 2 * owned or 1


async def _hand_back(msgs: list[Msg]) -> None:
    """Nak messages not to be handled here: a batch that arrived after `stop` (a scheduler that
    lost its lease, an agent told to drain), or one with no slot left for it, so whoever fetches
    next gets it at once instead of after the ack wait."""
    for msg in msgs:
        with contextlib.suppress(nats.errors.Error):
            await msg.nak()


def raise_if_cancelled() -> None:
    """Honour a cancel that was lost on the way: Python 3.11's `wait_for` (used inside nats-py's
    `next_msg`) can swallow one when a message arrives at the same moment, and a loop that was
    told to stop must not go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
