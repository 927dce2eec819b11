"""How pushed messages reach one connection's socket on this project's layer, without a task per message.

Channels' own loop (``await_many_dispatch``) keeps a task waiting in the layer's ``receive`` for each
connection's whole life, and makes a task and an ``asyncio.wait`` per message, which is most of the
server's CPU when thousands of connections receive tens of messages a second (README: Performance).
On ``echo.layer.RedisFanoutChannelLayer``, ``serve`` runs the connection instead, and every layer
event takes one route:

    layer reader --> Delivery.offer(event) --(idle, next in stream)--> written now (x-direct-send-text)
                                           \\--(anything else)--------> queued --> drain task -->
                                               EchoConsumer.handle_layer_events(everything waiting)

An event is written at once, in the layer's reader, only when the server offers a synchronous send,
nothing else is pending for this connection, and the consumer's stream check says it is simply the
next frame. Everything else is queued, in order, and a task that exists only while events wait hands
all of them to the consumer together, so a client that fell behind gets one frame carrying all it
missed. Handlers run one at a time (``turn``), as Channels guarantees; an idle connection has no task
of its own besides the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from channels.exceptions import StopConsumer

from echo.ops import metrics
from echo.protocol import RELAY_EVENT
from echo.ws.connections import DIRECT_SEND_TEXT
from echo.ws.streams import Verdict

if TYPE_CHECKING:
    from echo.consumers import EchoConsumer

logger = logging.getLogger(__name__)


async def serve(consumer: EchoConsumer, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Run one connection: client frames dispatched one at a time, layer events through ``Delivery``."""
    consumer.scope = scope
    consumer.base_send = send
    consumer.channel_name = await consumer.channel_layer.new_channel()
    direct_send = (scope.get("extensions") or {}).get(DIRECT_SEND_TEXT)
    delivery = Delivery(consumer, direct_send)
    try:
        while True:
            message = await receive()
            async with consumer.turn:
                await consumer.dispatch(message)
    except StopConsumer:
        pass
    finally:
        await delivery.stop()


class Delivery:
    """The layer events of one connection, on their way to its socket."""

    __slots__ = ("connection", "consumer", "direct_send", "drainer")  # one per connection, held for its life

    def __init__(self, consumer: EchoConsumer, direct_send: Callable[[str], bool] | None) -> None:
        self.consumer = consumer
        self.direct_send: Callable[[str], bool] = direct_send or _never
        self.connection = asyncio.current_task()
        self.drainer: asyncio.Task[None] | None = None
        consumer.channel_layer.attach(consumer.channel_name, self.queued, self.offer if direct_send else None)
        if direct_send is not None:
            consumer.delivery = self

    def offer(self, event: dict[str, Any]) -> bool:
        """Called by the layer's reader with a new event while this connection's queue is empty.

        True if it was handled now (written, or dropped as already sent); False to have it queued.
        """
        consumer = self.consumer
        if (
            event["type"] != RELAY_EVENT
            or self.drainer is not None
            or consumer.turn.locked()
            or consumer.closing
        ):
            return False
        verdict = consumer.verdict(event)
        if verdict is Verdict.DUPLICATE:
            return True
        if verdict is Verdict.RECOVER:
            return False
        if not self.direct_send(event["text"]):
            return False
        consumer.relayed(event)
        metrics.inc("ws_frames_out_total")
        return True

    def queued(self) -> None:
        """Called by the layer when this connection's queue stops being empty: start draining."""
        if self.drainer is None:
            self.drainer = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        """Hand queued layer events to the consumer, everything waiting at once, until none is left."""
        layer, channel = self.consumer.channel_layer, self.consumer.channel_name
        try:
            while events := layer.receive_nowait_all(channel):
                async with self.consumer.turn:
                    await self.consumer.handle_layer_events(events)
        except Exception:
            # A bug, not the client's doing: end the connection rather than leave it deaf.
            logger.exception("Relaying to %s failed", self.consumer.scope.get("client"))
            metrics.inc("ws_errors_total", "relay")
            if self.connection is not None:
                self.connection.cancel()
        finally:
            self.drainer = None

    async def stop(self) -> None:
        """Called when the connection ends: leave the layer first, so that nothing more is queued."""
        await self.consumer.channel_layer.forget_channel(self.consumer.channel_name)
        if self.drainer is not None:
            self.drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.drainer


def _never(text: str) -> bool:
    """The synchronous send of a server that offers none: nothing is ever written this way."""
    return False
