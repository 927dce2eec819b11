"""Per-connection asyncio primitives that cost a few hundred bytes less than asyncio's own.

The production server holds one receive queue and one "writable" event per WebSocket, for the
connection's whole life. asyncio's ``Queue`` allocates four deques up front and ``Event`` one, each
several hundred bytes even when empty, which adds up over tens of thousands of idle connections
(docs/benchmarks.md: What an idle connection holds). These two do the same job for exactly what
uvicorn's WebSocket protocol asks of them, and allocate storage only when it is used.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ReceiveQueue(Generic[T]):
    """An unbounded FIFO with ``put_nowait``, ``get`` and ``empty``, read by one task at a time.

    (uvicorn's connection has exactly one reader: the ASGI app's ``receive``.) The deque behind it is
    made when an item is put and dropped when the last is taken: a connection sits with an empty
    queue nearly all of its life.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[T] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> T:
        """Return the oldest item, waiting for one."""
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("ReceiveQueue.get() is already being awaited by another task")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

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
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        """Return True once the flag is set (at once if it is)."""
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
