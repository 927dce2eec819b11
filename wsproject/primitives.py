"""Per-connection asyncio primitives that cost a few hundred bytes less than asyncio's own.

The production server holds one receive queue, one "writable" event and one keepalive timer per
WebSocket, for the connection's whole life. asyncio's ``Queue`` allocates four deques up front and
``Event`` one, each several hundred bytes even when empty, and a loop timer is a handle plus (on
uvloop) a libuv timer, about 400 bytes: that adds up over tens of thousands of idle connections
(docs/benchmarks.md: What an idle connection holds). These do the same job for exactly what uvicorn's
WebSocket protocol asks of them, and allocate storage only when it is used.
"""

from __future__ import annotations

import asyncio
import collections
import math
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ReceiveQueue(Generic[T]):
    """An unbounded FIFO with ``put_nowait``, ``get`` and ``empty``, read by one task at a time.

    (uvicorn's connection has exactly one reader: the ASGI app's ``receive``.) The deque behind it is
    made when an item is put and dropped when the last is taken: a connection sits with an empty
    queue nearly all of its life. An item put while the reader waits goes straight to it.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[T] | None = None
        self._waiter: asyncio.Future[T] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, item: T) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)  # the queue is empty while its reader waits: straight to it
            return
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)

    def get(self) -> asyncio.Future[T]:
        """A future of the oldest item: done at once if one is queued, else when one is put.

        A future rather than a coroutine: a connection's reader waits for its next message with no
        suspended frame of the queue's own.
        """
        if self._waiter is not None and not self._waiter.done():
            raise RuntimeError("ReceiveQueue.get() is already being awaited by another task")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._items:
            future.set_result(self._items.popleft())
            if not self._items:
                self._items = None
        else:
            self._waiter = future
        return future

    def drop(self, unwanted: Callable[[T], bool]) -> int:
        """Remove the waiting items ``unwanted`` picks, keeping the others in order; return how many."""
        if not self._items:
            return 0
        kept = [item for item in self._items if not unwanted(item)]
        dropped = len(self._items) - len(kept)
        self._items = collections.deque(kept) if kept else None
        return dropped


class Flag:
    """``asyncio.Event``'s ``set``, ``clear``, ``is_set`` and ``wait``, with no storage until waited on."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        """Return True once the flag is set (at once if it is)."""
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None


class Timer:
    """A callback that ``SecondTimers`` calls when it falls due, unless ``cancel()`` was called first."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        self.callback = None


class SecondTimers:
    """``loop.call_later`` for timers that need be no more precise than the second, such as keepalive
    pings: each one is a ``Timer`` in the list of the whole second it falls due in (rounded up), and
    the loop holds one timer per second that has any, whatever the number of connections.

    A cancelled ``Timer`` stays in its second's list until then: one per scheduling, never more.
    """

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: dict[int, list[Timer]] = {}

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback()`` in ``delay`` seconds, or up to one second later."""
        timer = Timer(callback)
        loop = asyncio.get_running_loop()
        second = math.ceil(loop.time() + delay)
        timers = self._due.get(second)
        if timers is None:
            timers = self._due[second] = []
            loop.call_at(second, self._fire, second)
        timers.append(timer)
        return timer

    def _fire(self, second: int) -> None:
        for timer in self._due.pop(second, ()):
            callback, timer.callback = timer.callback, None
            if callback is None:
                continue
            try:
                callback()
            except Exception as exc:  # as the loop does for a callback of its own: report, go on
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"Exception in timer callback {callback!r}", "exception": exc}
                )


_second_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SecondTimers] = (
    weakref.WeakKeyDictionary()
)


def second_timers() -> SecondTimers:
    """The running event loop's ``SecondTimers``."""
    loop = asyncio.get_running_loop()
    timers = _second_timers.get(loop)
    if timers is None:
        timers = _second_timers[loop] = SecondTimers()
    return timers
