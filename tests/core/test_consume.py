"""The ack / nak / dead-letter choice (a table), and one message settled without a server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import msgspec
import nats.errors
import pytest

from trellis_core.consume import (
    Ack,
    Choice,
    Failed,
    Handled,
    Nak,
    Outcome,
    Park,
    PermanentError,
    Rejected,
    Settling,
    Slots,
    Undecodable,
    admit,
    choose,
    decode_error,
    fetch_loop,
    settle,
)
from trellis_core.events import RunEvent, RunStarted, encode

BACKOFF = (0.5, 2.0, 10.0)


@pytest.mark.parametrize(
    ("deliveries", "max_deliver", "expected"),
    [
        (1, 1, None),
        (1, 5, None),
        (5, 5, None),
        (6, 5, Park("delivered 6 times without an ack")),
        (2, 1, Park("delivered 2 times without an ack")),
    ],
)
def test_a_message_is_read_only_while_its_deliveries_are_within_max_deliver(
    deliveries: int, max_deliver: int, expected: Park | None
) -> None:
    assert admit(deliveries, max_deliver) == expected


@pytest.mark.parametrize(
    ("deliveries", "max_deliver", "outcome", "expected"),
    [
        (1, 5, Handled(), Ack()),
        (5, 5, Handled(), Ack()),
        (1, 5, Undecodable("truncated"), Park("undecodable: truncated")),
        (1, 5, Rejected("tenant is disabled"), Park("rejected: tenant is disabled")),
        (1, 5, Failed("db down"), Nak(0.5)),
        (2, 5, Failed("db down"), Nak(2.0)),
        (3, 5, Failed("db down"), Nak(10.0)),
        (4, 5, Failed("db down"), Nak(10.0)),  # past the schedule: its last step
        (5, 5, Failed("db down"), Park("failed 5 times, last: db down")),
        (1, 1, Failed("db down"), Park("failed 1 times, last: db down")),
    ],
)
def test_the_choice_after_handling_is_a_function_of_deliveries_max_deliver_and_outcome(
    deliveries: int, max_deliver: int, outcome: Outcome, expected: Choice
) -> None:
    assert choose(deliveries, max_deliver, outcome, BACKOFF) == expected


def test_deep_nesting_is_undecodable_with_a_reason_not_a_crash() -> None:
    nested = b'{"type":"run.started","tenant":"t","run_id":"r","junk":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(RecursionError) as raised:
        msgspec.json.decode(nested, type=RunEvent)
    assert decode_error(raised.value).startswith("RecursionError: maximum recursion depth exceeded")
    with pytest.raises(msgspec.DecodeError) as bad:
        msgspec.json.decode(b"{not json", type=RunEvent)
    assert decode_error(bad.value) == str(bad.value)


class Message:
    """What `settle` reads of a JetStream message, and what it did with it."""

    def __init__(self, data: bytes, deliveries: int) -> None:
        self.data, self.subject = data, "trellis.t.run.r.run.started"
        self.reply = f"$JS.ACK.TRELLIS_EVENTS.scheduler.{deliveries}.7.7.1764669600000000000.0"  # the count
        self.did: list[Any] = []

    async def ack(self) -> None:
        self.did.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.did.append(("nak", delay))


async def _settle(msg: Message, handle: Any, decode: Any = msgspec.json.Decoder(RunEvent).decode) -> list[Any]:
    parked: list[Any] = []

    async def park(m: Any, reason: str) -> None:
        parked.append(("parked", reason))

    how = Settling(max_deliver=3, backoff=BACKOFF, park=park, log=SimpleNamespace(
        info=lambda *a, **k: None, warning=lambda *a, **k: None, error=lambda *a, **k: None))  # fmt: skip
    await settle(msg, decode, handle, how)  # type: ignore[arg-type]
    return msg.did + parked


async def test_a_message_past_max_deliver_is_dead_lettered_without_being_decoded() -> None:
    def decode(data: bytes) -> Any:
        raise AssertionError("decoded a message past max_deliver")

    async def handle(value: Any, msg: Any) -> None:
        raise AssertionError("handled a message past max_deliver")

    did = await _settle(Message(b"[" * 5000, deliveries=4), handle, decode)
    assert did == [("parked", "delivered 4 times without an ack")]


async def test_a_message_nested_5000_deep_is_dead_lettered_and_the_handler_never_sees_it() -> None:
    seen: list[Any] = []

    async def handle(value: Any, msg: Any) -> None:
        seen.append(value)

    poison = b'{"type":"run.started","tenant":"t","run_id":"r","junk":' + b"[" * 5000 + b"]" * 5000 + b"}"
    did = await _settle(Message(poison, deliveries=1), handle)
    assert seen == []
    assert did[0][0] == "parked"
    assert did[0][1].startswith("undecodable: RecursionError:")


async def test_handled_acks_a_permanent_error_parks_and_a_failure_naks_with_the_backoff() -> None:
    good = encode(RunStarted(tenant="t", run_id="r"))

    async def ok(value: Any, msg: Any) -> None:
        pass

    async def refuse(value: Any, msg: Any) -> None:
        raise PermanentError("tenant is disabled")

    async def fail(value: Any, msg: Any) -> None:
        raise RuntimeError("db down")

    assert await _settle(Message(good, 1), ok) == ["ack"]
    assert await _settle(Message(good, 1), refuse) == [("parked", "rejected: tenant is disabled")]
    assert await _settle(Message(good, 2), fail) == [("nak", 2.0)]
    assert await _settle(Message(good, 3), fail) == [("parked", "failed 3 times, last: RuntimeError('db down')")]


async def test_a_cancelled_handler_hands_its_message_back() -> None:
    async def cancelled(value: Any, msg: Any) -> None:
        raise asyncio.CancelledError

    msg = Message(encode(RunStarted(tenant="t", run_id="r")), 1)
    with pytest.raises(asyncio.CancelledError):
        await _settle(msg, cancelled)
    assert msg.did == [("nak", None)]


async def test_slots_are_taken_up_to_what_is_free_and_waiting_takes_none() -> None:
    slots = Slots(3)
    assert await slots.wait_free(0.1) == 3
    assert slots.held == 0  # looking takes nothing
    assert slots.take_free(2) == 2
    assert slots.take_free(5) == 1
    assert await slots.wait_free(0.01) == 0
    slots.give_back(3)
    assert (slots.held, slots.free) == (0, 3)
    with pytest.raises(ValueError, match="released too many times"):
        slots.give_back()  # a slot freed twice is a bug, and says so


async def test_a_loop_waiting_for_a_slot_wakes_when_one_is_given_back() -> None:
    slots = Slots(1)
    assert slots.take_free(1) == 1
    waiting = asyncio.create_task(slots.wait_free(5))
    await asyncio.sleep(0)
    assert not waiting.done()
    slots.give_back()
    assert await asyncio.wait_for(waiting, 1) == 1


class Script:
    """A subscription answering each fetch from a script: a batch size, or an exception to raise."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers: list[int | Exception] = list(answers)
        self.asked: list[int] = []

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - as nats-py's
        self.asked.append(batch)
        answer = self.answers.pop(0) if self.answers else nats.errors.ConnectionClosedError()
        if isinstance(answer, Exception):
            raise answer
        return [Message(b"{}", 1) for _ in range(answer)]


async def test_without_slots_every_fetch_asks_for_the_batch_and_a_closed_connection_ends_the_loop() -> None:
    sub = Script(3, TimeoutError(), nats.errors.TimeoutError(), 0, 2)
    batches: list[tuple[int, int]] = []

    async def deliver(msgs: list[Any], owned: int) -> None:
        batches.append((len(msgs), owned))

    log = SimpleNamespace(warning=lambda *a, **k: None)
    await asyncio.wait_for(fetch_loop(sub, asyncio.Event(), deliver, batch=256, log=log), 5)  # type: ignore[arg-type]
    assert sub.asked == [256] * 6
    assert batches == [(3, 3), (2, 2)]


async def test_with_slots_a_loop_asks_for_what_is_free_and_a_failed_fetch_holds_none() -> None:
    slots = Slots(4)
    sub = Script(nats.errors.NoRespondersError(), 1)
    delivered: list[int] = []

    async def deliver(msgs: list[Any], owned: int) -> None:
        delivered.append(owned)
        slots.give_back(owned)

    log = SimpleNamespace(warning=lambda *a, **k: None)
    await asyncio.wait_for(fetch_loop(sub, asyncio.Event(), deliver, batch=4, slots=slots, wait=0.01, log=log), 5)  # type: ignore[arg-type]
    assert sub.asked == [1, 1, 2]  # twice what the last fetch brought, one after an empty one
    assert delivered == [1]
    assert slots.held == 0


class Shared(Script):
    """A fetch that, while it waits, lets another loop sharing the slots fill the last one."""

    def __init__(self, slots: Slots, *answers: int | Exception) -> None:
        super().__init__(*answers)
        self.slots = slots
        self.messages: list[Message] = []

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - as nats-py's
        msgs = await super().fetch(batch, timeout)
        self.slots.take_free(self.slots.free)  # the other loop's message arrived first
        self.messages += msgs
        return msgs


async def test_a_message_with_no_slot_left_is_handed_back_at_once() -> None:
    slots = Slots(1)
    sub = Shared(slots, 1)
    delivered: list[int] = []

    async def deliver(msgs: list[Any], owned: int) -> None:
        delivered.append(owned)

    log = SimpleNamespace(warning=lambda *a, **k: None)
    stop = asyncio.Event()
    loop = asyncio.create_task(fetch_loop(sub, stop, deliver, batch=4, slots=slots, wait=0.01, log=log))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert delivered == []  # no slot: not run here, over the agent's concurrency
    assert sub.messages[0].did == [("nak", None)]  # but handed back for whoever fetches next
    assert slots.held == 1  # the other loop's


class StopsWhileFetching(Script):
    """A fetch during which the loop's `stop` is set (a stack told to stop)."""

    def __init__(self, stop: asyncio.Event, *answers: int | Exception) -> None:
        super().__init__(*answers)
        self.stop = stop
        self.messages: list[Message] = []

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - as nats-py's
        msgs = await super().fetch(batch, timeout)
        self.stop.set()
        self.messages += msgs
        return msgs


@pytest.mark.parametrize("finish_fetched", [False, True], ids=["hand-back", "finish"])
async def test_a_batch_fetched_as_the_loop_stops_is_handed_back_or_finished(finish_fetched: bool) -> None:
    stop = asyncio.Event()
    sub = StopsWhileFetching(stop, 2)
    delivered: list[int] = []

    async def deliver(msgs: list[Any], owned: int) -> None:
        delivered.append(len(msgs))

    log = SimpleNamespace(warning=lambda *a, **k: None)
    await asyncio.wait_for(
        fetch_loop(sub, stop, deliver, batch=8, log=log, finish_fetched=finish_fetched),  # type: ignore[arg-type]
        5,
    )
    if finish_fetched:  # a consumer that can still write it: no nak the server may lose on stopping
        assert (delivered, [m.did for m in sub.messages]) == ([2], [[], []])
    else:
        assert (delivered, [m.did for m in sub.messages]) == ([], [[("nak", None)], [("nak", None)]])
