"""The WebSocket consumer: echoes every frame back and relays pushed data frames to its client."""

from __future__ import annotations

import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from echo.protocol import BROADCAST_GROUP

logger = logging.getLogger(__name__)

# RFC 6455 close code for "try again later": the server could not keep up with this client.
CLOSE_TRY_AGAIN_LATER = 1013


class EchoConsumer(AsyncWebsocketConsumer):
    """One WebSocket connection: an echo of what the client sends, plus the broadcast group's data.

    Clients can only talk to themselves: nothing a client sends reaches the group or anyone else.
    """

    groups = [BROADCAST_GROUP]

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Called for every ASGI and channel-layer event: route it to its handler.

        Unlike Channels' own ``dispatch``, this skips ``aclose_old_connections()``, a thread round
        trip per event that only matters to code touching the database, which this consumer never
        does (database code must go through ``database_sync_to_async``, which closes them itself).
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # ------------------------------------------------------------ client frames

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called with each frame from the client: send it straight back, text as text, binary as binary."""
        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)

    # ------------------------------------------------------------ channel-layer events

    async def relay_frame(self, event: dict[str, str]) -> None:
        """Called for each pushed message: forward its pre-encoded JSON text unchanged."""
        await self.send(text_data=event["text"])

    async def layer_overflow(self, event: dict[str, Any]) -> None:
        """Called when this client fell so far behind that the layer dropped its queue: close it.

        The client learns from the close code (1013, try again later) that it missed data and can
        reconnect, rather than silently showing a stream with holes in it.
        """
        logger.warning(
            "Closing %s: %d pushed messages dropped because it could not keep up",
            self.scope.get("client"),
            event["dropped"],
        )
        await self.close(code=CLOSE_TRY_AGAIN_LATER, reason="too slow: messages dropped")
