"""The WebSocket consumer: echoes every frame back and relays the data of the topics its client follows."""

from __future__ import annotations

import functools
import logging
from typing import Any

from echo.conf import app_settings as settings
from echo.errors import CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHORIZED, ClientError
from echo.ops import metrics
from echo.protocol import error_frame
from echo.ws import connections
from echo.ws.admission import Admission, accepted_protocol
from echo.ws.limits import EchoLimit
from echo.ws.relay import Relay
from echo.ws.runtime import DeliveredWebsocketConsumer
from echo.ws.subscription import parse_subscription

logger = logging.getLogger(__name__)


class EchoConsumer(DeliveredWebsocketConsumer):
    """One WebSocket connection: an echo of what the client sends, plus live data of chosen topics.

    Who may connect, and for how long, is ``Admission``'s; what is pushed, ``Relay``'s; nothing a client
    sends reaches anyone else. Runs on any Channels layer with groups; history, ``since`` and presence
    need this project's layer (``echo.layer.capabilities``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admission = Admission()
        self.relay: Relay | None = None  # once admitted
        self.joined = False
        self.echo_limit: EchoLimit | None = None  # made at the client's first frame: listeners never need one

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Called on the handshake: admit, catch up on each topic (before joining it, so the client's
        position is known before any live frame), join, accept, then send what it is owed."""
        try:
            default, numbered = settings.WS_HISTORY_DEFAULT, self.features.numbered
            most = self.channel_layer.history_length if numbered else default
            query = self.scope.get("query_string", b"")
            wants = parse_subscription(query, default_history=default, max_history=most)
            expired = functools.partial(self.send_to_self, "token.expired")
            await self.admission.admit(self.scope, wants.topics, expired)
        except ClientError as error:
            await self.accept(accepted_protocol(self.scope))
            await self.refuse(error)
            return
        self.relay = Relay(self.channel_layer, self.features, wants, self.sender, self.scope.get("client"))
        frames = await self.relay.start(self.channel_name)
        self.write_directly(self.relay.offer, self.relay.leave_lanes)
        self.groups = (*self.relay.groups, *filter(None, [self.admission.identity_group]))
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept(accepted_protocol(self.scope))
        if self.features.presence:
            self.admission.presence(self.channel_layer, wants.topics, "join")
        self.joined = True
        connections.opened()
        metrics.inc("ws_connections_total")
        await self.sender.send_batched(frames)

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, after the groups were left."""
        if self.joined and self.relay is not None:
            if self.features.presence:
                self.admission.presence(self.channel_layer, self.relay.wants.topics, "leave")
            connections.closed()
            self.joined = False
        self.admission.release()

    # ------------------------------------------------------------ client frames

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called with each frame from the client: sent straight back, text as text, binary as binary,
        within its limits (``EchoLimit``: too big closes with 1009, persistent flooding with 1008)."""
        if self.closing:
            return
        metrics.inc("ws_frames_in_total", "text" if text_data is not None else "binary")
        self.echo_limit = self.echo_limit or EchoLimit()
        try:
            if not self.echo_limit.allow(text_data if text_data is not None else bytes_data or b""):
                return
        except ClientError as error:
            await self.refuse(error)
            return
        metrics.inc("ws_frames_out_total")
        frame = {"text": text_data} if text_data is not None else {"bytes": bytes_data}
        await self.sender.send({"type": "websocket.send", **frame})

    # ------------------------------------------------------------ channel-layer events

    async def relay_frame(self, event: dict[str, Any]) -> None:
        """Called with one pushed frame (Channels' own loop: one event at a time)."""
        await self.handle_layer_events([event])

    async def handle_layer_events(self, events: list[dict[str, Any]]) -> None:
        """Called with layer events in order (``Relay.relay``); the others come back to ``dispatch``."""
        try:
            if self.relay is not None:
                await self.relay.relay(events, self.dispatch)
        except ClientError as error:
            await self.refuse(error)

    async def layer_resync(self, event: dict[str, Any]) -> None:
        """Called after the server reconnected to Redis: what was published meanwhile (Redis back with
        its data: the missed frames; without: a ``reset`` each, then the new streams)."""
        if self.relay is not None:
            await self.sender.send_batched(await self.relay.catch_up_all())

    async def layer_overflow(self, event: dict[str, Any]) -> None:
        """Called when this client fell so far behind that the layer dropped its queue: close with 1013;
        it reconnects with ``since`` and gets exactly what it missed."""
        client, dropped = self.scope.get("client"), event["dropped"]
        logger.warning("Closing %s: %d pushed messages dropped because it could not keep up", client, dropped)
        metrics.inc("ws_dropped_total", "overflow", dropped)
        metrics.inc("ws_closed_total", str(CLOSE_TRY_AGAIN_LATER))
        self.sender.closing = True
        for group in self.groups:  # nothing more piles up for it while the close waits to be written
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.close(code=CLOSE_TRY_AGAIN_LATER, reason="too slow: messages dropped")

    async def token_expired(self, event: dict[str, Any]) -> None:
        """Called when the token expires: the client gets a new one and reconnects with ``since``."""
        await self.refuse(
            ClientError("token_expired", "the connection token has expired", CLOSE_UNAUTHORIZED)
        )

    async def identity_revoked(self, event: dict[str, Any]) -> None:
        """Called when this connection's user or key may have lost its right (``echo.access.revocation``)."""
        if not self.closing and (error := await self.admission.revoked(self.scope, event)) is not None:
            await self.refuse(error)

    async def refuse(self, error: ClientError) -> None:
        """Tell the client what it got wrong, in an error frame, then close with the error's code."""
        logger.warning("Closing %s: %s: %s", self.scope.get("client"), error.code, error.detail)
        metrics.inc("ws_refused_total", error.code)
        metrics.inc("ws_closed_total", str(error.close_code))
        self.sender.closing = True
        await self.sender.send({"type": "websocket.send", "text": error_frame(error.code, error.detail)})
        await self.close(code=error.close_code, reason=error.code)
