"""How pushed messages reach one connection's socket on this project's layer, without a task per message.

Channels' own loop (``await_many_dispatch``) keeps a task waiting in the layer's ``receive`` for each
connection's whole life, and makes a task and an ``asyncio.wait`` per message, which is most of the
server's CPU when thousands of connections receive tens of messages a second (docs/benchmarks.md).
On ``echo.layer.RedisFanoutChannelLayer`` the consumer runs its connection with a ``Delivery``
instead, and every layer event takes one route:

    layer reader --> Delivery.offer(events) --(idle, next in stream)--> written now (try_now)
                                            \\--(anything else)--------> queued --> drain task -->
                                                handle(everything waiting)

Events are written at once, in the layer's reader, only when nothing else is pending for this
connection and ``try_now`` (the relay's ``offer``: the stream check and the server's synchronous
write) takes them. Everything else is queued, in order, and a task that exists only while events
wait hands all of them to ``handle`` together, so a client that fell behind gets one frame carrying
all it missed. Handlers run one at a time (``turn``), as Channels guarantees; an idle connection has
no task of its own besides the server's.

A connection in its topic's lane (``echo.ws.lanes``) is not offered that topic's events at all: the
lane writes them. ``busy`` takes it out of its lanes the moment anything is queued for it, so that
what comes next waits behind what was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from echo.ops import metrics

logger = logging.getLogger(__name__)

Event = dict[str, Any]


class Delivery:
    """The layer events of one connection, on their way to its socket."""

    # One per connection, held for its life.
    __slots__ = ("busy", "channel", "connection", "drainer", "handle", "layer", "try_now", "turn")

    def __init__(
        self,
        layer: Any,
        channel: str,
        turn: asyncio.Lock,
        handle: Callable[[list[Event]], Awaitable[None]],
        direct: bool = False,
    ) -> None:
        """``direct``: the server can write synchronously, so events may be offered to ``try_now``
        (set once the connection knows what to do with them) before they are queued."""
        self.layer, self.channel, self.turn, self.handle = layer, channel, turn, handle
        self.try_now: Callable[[Sequence[Event]], bool] | None = None
        self.busy: Callable[[], None] | None = None  # told when an event is queued, and at the end
        self.connection = asyncio.current_task()
        self.drainer: asyncio.Task[None] | None = None
        layer.attach(channel, self.queued, self.offer if direct else None)

    def offer(self, events: Sequence[Event]) -> bool:
        """Called by the layer's reader with new events while this connection's queue is empty.

        True if they were handled now (written, or dropped as already sent); False to have them queued.
        """
        if self.drainer is not None or self.turn.locked() or self.try_now is None:
            return False
        return self.try_now(events)

    def queued(self) -> None:
        """Called by the layer when this connection's queue stops being empty: start draining."""
        if self.busy is not None:
            self.busy()
        if self.drainer is None:
            self.drainer = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        """Hand queued layer events to ``handle``, everything waiting at once, until none is left."""
        try:
            while events := self.layer.receive_nowait_all(self.channel):
                async with self.turn:
                    await self.handle(events)
        except Exception:
            # A bug, not the client's doing: end the connection rather than leave it deaf.
            logger.exception("Relaying to %s failed", self.channel)
            metrics.inc("ws_errors_total", "relay")
            if self.connection is not None:
                self.connection.cancel()
        finally:
            self.drainer = None

    async def stop(self) -> None:
        """Called when the connection ends: leave the layer first, so that nothing more is queued."""
        if self.busy is not None:
            self.busy()
        await self.layer.forget_channel(self.channel)
        if self.drainer is not None:
            self.drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.drainer
