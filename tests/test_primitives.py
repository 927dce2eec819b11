"""The production server's per-connection queue, flag and keepalive timers, on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.event_loop import loop_turns
from wsproject.primitives import Flag, ReceiveQueue, SecondTimers, second_timers


async def test_the_queue_hands_items_over_in_order_and_wakes_a_waiting_reader() -> None:
    queue: ReceiveQueue[int] = ReceiveQueue()
    assert queue.empty() and queue.qsize() == 0
    reader = asyncio.ensure_future(queue.get())
    await loop_turns()
    assert not reader.done()
    queue.put_nowait(1)
    assert await asyncio.wait_for(reader, 1) == 1
    for n in range(2, 1002):
        queue.put_nowait(n)
    assert queue.qsize() == 1000
    assert [await queue.get() for _ in range(1000)] == list(range(2, 1002))
    assert queue.empty()


async def test_the_queue_drops_the_items_picked_and_keeps_the_rest_in_order() -> None:
    queue: ReceiveQueue[int] = ReceiveQueue()
    assert queue.drop(lambda n: True) == 0
    for n in range(10):
        queue.put_nowait(n)
    assert queue.drop(lambda n: n % 3 != 0) == 6
    assert [await queue.get() for _ in range(4)] == [0, 3, 6, 9]
    queue.put_nowait(1)
    assert queue.drop(lambda n: True) == 1 and queue.empty()


async def test_the_queue_refuses_a_second_concurrent_reader() -> None:
    queue: ReceiveQueue[str] = ReceiveQueue()
    first = asyncio.ensure_future(queue.get())
    await loop_turns()
    with pytest.raises(RuntimeError, match="already being awaited"):
        await queue.get()
    queue.put_nowait("x")
    assert await asyncio.wait_for(first, 1) == "x"


async def test_a_cancelled_reader_leaves_the_queue_usable() -> None:
    queue: ReceiveQueue[str] = ReceiveQueue()
    reader = asyncio.ensure_future(queue.get())
    await loop_turns()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    queue.put_nowait("after")
    assert await asyncio.wait_for(queue.get(), 1) == "after"


async def test_the_flag_releases_every_waiter_when_set_and_holds_them_when_clear() -> None:
    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await loop_turns()
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True] * 3
    assert await flag.wait() is True  # already set: at once
    flag.clear()
    later = asyncio.ensure_future(flag.wait())
    await loop_turns()
    assert not later.done() and not flag.is_set()
    flag.set()
    assert await asyncio.wait_for(later, 1) is True
    assert flag._waiters is None, "no storage is left behind once nobody waits"


async def test_timers_fire_in_order_of_due_second_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    timers = SecondTimers()
    fired: list[tuple[str, float]] = []
    done = loop.create_future()
    start = loop.time()
    timers.call_later(1.2, lambda: fired.append(("later", loop.time())))
    timers.call_later(0.1, lambda: fired.append(("soon", loop.time())))
    timers.call_later(1.5, lambda: done.set_result(None))
    await asyncio.wait_for(done, 5)
    assert [name for name, _ in fired] == ["soon", "later"]
    assert fired[0][1] >= start + 0.1 and fired[1][1] >= start + 1.2


async def test_a_cancelled_timer_does_not_fire_and_a_failing_one_does_not_stop_the_rest() -> None:
    loop = asyncio.get_running_loop()
    reported: list[BaseException] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
    try:
        timers = SecondTimers()
        fired: list[str] = []
        done = loop.create_future()
        timers.call_later(0, lambda: 1 / 0)
        timers.call_later(0, lambda: fired.append("cancelled")).cancel()
        timers.call_later(0, lambda: fired.append("after the failure"))
        timers.call_later(0, lambda: done.set_result(None))
        await asyncio.wait_for(done, 5)
    finally:
        loop.set_exception_handler(previous)
    assert fired == ["after the failure"]
    assert [type(exc) for exc in reported] == [ZeroDivisionError]


async def test_one_set_of_timers_per_loop_keeping_timers_by_the_second() -> None:
    timers = second_timers()
    assert second_timers() is timers
    for _ in range(1000):
        timers.call_later(30, lambda: None)
    assert len(timers._due) <= 2, "a thousand timers made within a second fall in one or two seconds"
