"""The WebSocket consumer: echoes every frame back and relays the data of the topics its client follows."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from redis.exceptions import RedisError

from echo.access.identity import Credential, connection_reader
from echo.access.revocation import identity_group
from echo.access.rules import topic_access
from echo.access.tokens import PROTOCOL, TokenError, offered_token
from echo.conf import app_settings as settings
from echo.layer.capabilities import Capabilities, capabilities
from echo.ops import metrics
from echo.protocol import (
    RELAY_EVENT,
    error_frame,
    group_topic,
    reset_frame,
    topic_group,
    warning_frame,
)
from echo.ws import connections, delivery
from echo.ws.limits import FrameRateLimit, per_address
from echo.ws.presence import presence_for
from echo.ws.streams import TopicStreams, Verdict
from echo.ws.subscription import (
    CLOSE_FORBIDDEN,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNAUTHORIZED,
    ClientError,
    Subscription,
    parse_subscription,
)

if TYPE_CHECKING:
    from echo.ws.delivery import Delivery

logger = logging.getLogger(__name__)

# RFC 6455 close codes: "try again later" and "message too big".
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOO_BIG = 1009

# Layer sends started from timer callbacks, referenced until done (the loop keeps only weak references).
_pending_sends: set[asyncio.Future[None]] = set()

# Several frames go out newline-joined in text frames of at most this many characters.
BATCH_CHARS = 64 * 1024


class EchoConsumer(AsyncWebsocketConsumer):
    """One WebSocket connection: an echo of what the client sends, plus live data of chosen topics.

    On connect the client gets recent history (or exactly what it missed, with ``since``), then live
    frames, with no gap and no duplicate between the two (``echo.ws.streams``). Nothing a client sends
    reaches anyone else. Runs on any Channels layer with groups; history, ``since`` and presence need
    this project's layer (``echo.layer.capabilities``).
    """

    subscription: Subscription
    streams: TopicStreams
    joined = False
    closing = False
    counted_address: str | None = None
    history_unavailable = False  # the last attempt to read history failed
    viewer: str | None = None  # who presence lists on the connection's topics that are not public
    token_expiry: asyncio.TimerHandle | None = None
    credential: Credential | None = None  # who got in, if anyone: checked again on revocation events
    rate: FrameRateLimit | None = None  # made at the client's first frame: listeners never need one
    # Set by echo.ws.delivery on this project's layer when the server offers a synchronous send.
    delivery: Delivery | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turn = asyncio.Lock()  # handlers run one at a time, as Channels guarantees

    @property
    def features(self) -> Capabilities:
        """What the channel layer can do (``echo.layer.capabilities``, looked up once per layer)."""
        return capabilities(self.channel_layer)

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        """Channels' ``as_asgi``, whose app returns the consumer's coroutine instead of awaiting it
        (one suspended frame fewer per connection); the same attributes, name and docstring."""
        channels_app = super().as_asgi(**initkwargs)

        def app(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
            return cls(**initkwargs)(scope, receive, send)

        app.consumer_class = channels_app.consumer_class  # type: ignore[attr-defined]
        app.consumer_initkwargs = channels_app.consumer_initkwargs  # type: ignore[attr-defined]
        return functools.update_wrapper(app, cls, updated=())

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        """Channels' own loop on any layer; on this project's layer ``echo.ws.delivery``'s, with no
        task per message and pushed frames written straight to idle sockets.

        Returns the loop's coroutine rather than awaiting it, so that an idle connection does not
        hold one more suspended frame for its whole life.
        """
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.features.attach:
            return delivery.serve(self, scope, receive, send)
        return super().__call__(scope, receive, send)

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

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Called on the handshake: check the URL, catch up on each topic, join them, accept.

        History is read before joining, so the client's position is known before any live frame
        arrives; a frame published in between shows up as a hole before the first live frame, and
        is filled from history then (``TopicStreams``).
        """
        try:
            self.subscription = parse_subscription(
                self.scope.get("query_string", b""),
                default_history=settings.WS_HISTORY_DEFAULT,
                max_history=getattr(self.channel_layer, "history_length", settings.WS_HISTORY_DEFAULT),
            )
            self.count_address()  # before any database query a refused address could cause
            await self.authorize()
        except ClientError as error:
            await self.accept(self.protocol)
            await self.refuse(error)
            return
        self.groups = [topic_group(topic) for topic in self.subscription.topics]
        paced = self.pace(self.subscription.max_rate)
        self.streams = TopicStreams(
            self.subscription.history,
            {topic_group(topic): position for topic, position in self.subscription.since.items()},
            skips=paced,
        )
        frames = await self.catch_up_all()
        if self.subscription.max_rate is not None and not paced:
            frames.append(warning_frame("no_max_rate", "this server's channel layer cannot pace frames"))
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        if self.credential is not None:
            await self.channel_layer.group_add(identity_group(self.credential), self.channel_name)
        await self.accept(self.protocol)
        if self.features.presence:
            self.presence_change("join")
        self.joined = True
        connections.opened(self)
        metrics.inc("ws_connections_total")
        await self.send_batched(frames)

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, after the groups were left."""
        if self.token_expiry is not None:
            self.token_expiry.cancel()
        if self.credential is not None:
            await self.channel_layer.group_discard(identity_group(self.credential), self.channel_name)
        if self.joined:
            if self.features.presence:
                self.presence_change("leave")
            connections.closed(self)
        per_address.remove(self.counted_address)

    def count_address(self) -> None:
        """Count the connection against its address's cap (``disconnect`` uncounts it), or refuse it."""
        address = (self.scope.get("client") or (None,))[0]
        cap = settings.WS_MAX_CONNECTIONS_PER_ADDRESS
        self.counted_address = per_address.try_add(address, cap)
        if self.counted_address is None and not per_address.exempt(address, cap):
            limit = f"at most {cap} connections per address"
            raise ClientError("too_many_connections", limit, CLOSE_TRY_AGAIN_LATER)

    @property
    def protocol(self) -> str | None:
        """The subprotocol to accept: the app's, if the client offered it (as token holders do)."""
        return PROTOCOL if PROTOCOL in self.scope.get("subprotocols", ()) else None

    async def authorize(self) -> None:
        """Called on connect: refuse the whole request unless the client may read every topic asked for.

        A client never believes it watches what it does not: one topic it may not read refuses them
        all (``forbidden``, 3003). Who it is comes from its connection token, else its session cookie
        (``echo.access.identity``), looked up only if a topic is not public or a token is offered. A
        connection that came with a token is closed when the token expires (``token_expired``, 3000).
        """
        access = topic_access()
        topics = self.subscription.topics
        private = [topic for topic in topics if not access.is_public(topic)]
        if not private and offered_token(self.scope.get("subprotocols") or []) is None:
            return
        try:
            reader, token, self.credential = await connection_reader(self.scope)
        except TokenError as error:
            raise ClientError(error.code, error.detail, CLOSE_UNAUTHORIZED) from None
        denied = [topic for topic in topics if not await access.can_read(reader, topic)]
        if denied:
            raise ClientError("forbidden", f"not allowed to read {', '.join(denied)}", CLOSE_FORBIDDEN)
        if private:
            self.viewer = reader.name
        if token is not None:
            self.token_expiry = asyncio.get_running_loop().call_later(token.remaining(), self._token_expired)

    def _token_expired(self) -> None:
        self.send_to_self("token.expired")

    def send_to_self(self, event_type: str) -> None:
        """From a timer callback: an event through the layer, so it is handled in turn like any other."""
        task = asyncio.ensure_future(self.channel_layer.send(self.channel_name, {"type": event_type}))
        _pending_sends.add(task)
        task.add_done_callback(_pending_sends.discard)

    async def token_expired(self, event: dict[str, Any]) -> None:
        """Called when the connection's token expires: close it; the client gets a new token and
        reconnects with ``since``, missing nothing."""
        self.token_expiry = None
        await self.refuse(
            ClientError("token_expired", "the connection token has expired", CLOSE_UNAUTHORIZED)
        )

    async def identity_revoked(self, event: dict[str, Any]) -> None:
        """Called when this connection's user or key may have lost its right (``echo.access.revocation``):
        check the credential again, and close if it no longer holds."""
        if self.credential is None or self.closing:
            return
        error = await self.credential.revoked(event.get("session"))
        if error is not None:
            await self.refuse(error)

    def presence_change(self, change: str) -> None:
        """Count this connection in (``join``) or out of (``leave``) its topics' presence."""
        presence = presence_for(self.channel_layer, settings.WS_PRESENCE_TTL)
        update = presence.join if change == "join" else presence.leave
        if self.viewer is None:
            update(self.subscription.topics)
            return
        access = topic_access()
        update(tuple(topic for topic in self.subscription.topics if access.is_public(topic)))
        update(tuple(topic for topic in self.subscription.topics if not access.is_public(topic)), self.viewer)

    async def refuse(self, error: ClientError) -> None:
        """Tell the client what it got wrong, in an error frame, then close with the error's code."""
        logger.warning("Closing %s: %s: %s", self.scope.get("client"), error.code, error.detail)
        self.closing = True
        metrics.inc("ws_refused_total", error.code)
        metrics.inc("ws_closed_total", str(error.close_code))
        await self.send(text_data=error_frame(error.code, error.detail))
        await self.close(code=error.close_code, reason=error.code)

    # ------------------------------------------------------------ client frames

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called with each frame from the client: send it straight back, text as text, binary as binary.

        Frames over ``WS_MAX_FRAME_BYTES`` close the connection (1009); frames over the rate limit are
        dropped (not echoed) and counted, and persistent flooding closes it (1008).
        """
        if self.closing:
            return
        size = len(text_data) if text_data is not None else len(bytes_data or b"")
        metrics.inc("ws_frames_in_total", "text" if text_data is not None else "binary")
        if size > settings.WS_MAX_FRAME_BYTES:
            metrics.inc("ws_dropped_total", "too_big")
            limit = settings.WS_MAX_FRAME_BYTES
            await self.refuse(
                ClientError("frame_too_big", f"frames are limited to {limit} bytes", CLOSE_TOO_BIG)
            )
            return
        if self.rate is None:
            self.rate = FrameRateLimit(
                rate=settings.WS_RATE_LIMIT,
                burst=settings.WS_RATE_BURST,
                max_strikes=settings.WS_RATE_STRIKES,
            )
        if not self.rate.allow():
            metrics.inc("ws_dropped_total", "rate_limit")
            if self.rate.abusive:
                limit = f"more than {settings.WS_RATE_LIMIT:g} frames/s, persistently"
                await self.refuse(ClientError("rate_limited", limit, CLOSE_POLICY_VIOLATION))
            return
        metrics.inc("ws_frames_out_total")
        if text_data is not None:
            await self.send_frame({"type": "websocket.send", "text": text_data})
        else:
            await self.send_frame({"type": "websocket.send", "bytes": bytes_data})

    # ------------------------------------------------------------ channel-layer events

    async def relay_frame(self, event: dict[str, Any]) -> None:
        """Called with one pushed frame (Channels' own loop: one event at a time)."""
        await self.handle_layer_events([event])

    async def handle_layer_events(self, events: list[dict[str, Any]]) -> None:
        """Called with layer events in order: pushed frames go out newline-joined, as few frames as can be.

        A frame that is not simply the next of its stream (a hole before it, another epoch) makes the
        client catch up from history first, which holds that frame too (it is stored before it is
        published).
        """
        texts: list[str] = []
        for event in events:
            if event["type"] != RELAY_EVENT:
                await self._relay(texts)  # what came before another event goes out before it
                texts = []
                await self.dispatch(event)
                continue
            verdict = self.verdict(event)
            if verdict is Verdict.SEND:
                self.relayed(event)
                texts.append(event["text"])
            elif verdict is Verdict.RECOVER:
                await self._relay(texts)
                texts = []
                await self.send_batched(await self.catch_up(event["group"]))
                if self.history_unavailable:
                    # Sending it would leave a hole: the client reconnects with since instead.
                    unreadable = ClientError(
                        "history_unavailable", "history cannot be read", CLOSE_TRY_AGAIN_LATER
                    )
                    await self.refuse(unreadable)
                    return
        await self._relay(texts)

    def verdict(self, event: dict[str, Any]) -> Verdict:
        """What to do with a pushed frame: frames that are not numbered (presence, plain layers) are sent."""
        if "seq" not in event:
            return Verdict.SEND
        return self.streams.check(event["group"], event["epoch"], event["seq"])

    def relayed(self, event: dict[str, Any]) -> None:
        """Record that a pushed frame is on its way to the client."""
        if "seq" in event:
            self.streams.advance(event["group"], event["epoch"], event["seq"])
            metrics.inc("ws_messages_relayed_total")

    def pace(self, max_rate: float | None) -> bool:
        """Called on connect with the client's ``max_rate``: have the layer pace its live frames, once
        per process for every client of a topic and rate (``echo.layer.conflation``); True if it does."""
        if max_rate is None or not self.features.attach:  # other layers cannot: every frame is sent
            return False
        self.channel_layer.pace(self.channel_name, max_rate)
        return True

    async def layer_resync(self, event: dict[str, Any]) -> None:
        """Called after the server reconnected to Redis: send what was published while it was away.

        Redis may have come back with its data (the streams carry on: the missed frames are replayed)
        or without it (new epochs: a ``reset`` each, then the new streams from their start).
        """
        await self.send_batched(await self.catch_up_all())

    async def layer_overflow(self, event: dict[str, Any]) -> None:
        """Called when this client fell so far behind that the layer dropped its queue: close it.

        The client learns from the close code (1013, try again later) that it missed data, and gets
        exactly that data back when it reconnects with ``since``.
        """
        logger.warning(
            "Closing %s: %d pushed messages dropped because it could not keep up",
            self.scope.get("client"),
            event["dropped"],
        )
        metrics.inc("ws_dropped_total", "overflow", event["dropped"])
        metrics.inc("ws_closed_total", str(CLOSE_TRY_AGAIN_LATER))
        self.closing = True
        for group in self.groups:  # nothing more piles up for it while the close waits to be written
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.close(code=CLOSE_TRY_AGAIN_LATER, reason="too slow: messages dropped")

    # ------------------------------------------------------------ history

    async def catch_up_all(self) -> list[str]:
        """The frames the client is owed of every topic it follows, topic after topic."""
        return [frame for group in self.groups for frame in await self.catch_up(group)]

    async def catch_up(self, group: str) -> list[str]:
        """The frames the client is owed of ``group`` from history (``TopicStreams.catch_up``).

        If Redis cannot be read, returns none and leaves the client's position as it is: the
        layer's resync catches up once Redis is back, and a live frame that finds a hole first
        closes the connection with 1013 (see ``handle_layer_events``). On a layer without history,
        says so instead (see ``echo.layer.capabilities``).
        """
        if not self.features.numbered:
            return self._without_history(group)
        try:
            caught_up = await self.streams.catch_up(group, self.channel_layer.group_history)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning(
                "History of %r unavailable for %s (%s); it is sent when Redis is back",
                group_topic(group),
                self.scope.get("client"),
                exc,
            )
            self.history_unavailable = True
            return []
        if self.history_unavailable:  # (set only when it changes: one attribute fewer per connection)
            self.history_unavailable = False
        metrics.inc("ws_messages_replayed_total", amount=caught_up.replayed)
        if caught_up.reset:
            metrics.inc("ws_resets_total")
        return caught_up.frames

    def _without_history(self, group: str) -> list[str]:
        topic = group_topic(group)
        frames = []
        if self.streams.position(group) is not None:
            frames.append(reset_frame(topic, None, "this server's channel layer keeps no history"))
        if self.subscription.history and group == self.groups[0]:
            frames.append(warning_frame("no_history", "this server's channel layer keeps no history"))
        return frames

    # ------------------------------------------------------------ sending

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the socket; nothing to do if the server already did (a stalled client) or the client left."""
        self.closing = True
        message: dict[str, Any] = {"type": "websocket.close"}
        if code is not None:
            message["code"] = code
        if reason:
            message["reason"] = reason
        await self.send_frame(message)

    async def send_frame(self, message: dict[str, Any]) -> None:
        """Send one ASGI message to the socket: the hot path, without the base class's layers."""
        try:
            await self.base_send(message)
        except OSError:
            # The client went away while this was on its way (ASGI servers raise an OSError then);
            # the disconnect event that follows ends this consumer.
            self.closing = True
        except RuntimeError as exc:
            # The server closed the socket itself (a frame too big, invalid UTF-8) while frames it
            # had already passed on were still queued for us: what is left has nowhere to go.
            if "websocket.close" not in str(exc):
                raise
            self.closing = True

    async def _relay(self, texts: list[str]) -> None:
        if texts and not self.closing:
            await self.send_batched(texts)

    async def send_batched(self, frames: list[str]) -> None:
        """Send frames newline-joined in as few text frames as ``BATCH_CHARS`` allows."""
        batch: list[str] = []
        size = 0
        for frame in frames:
            if batch and size + len(frame) > BATCH_CHARS:
                await self._send_text("\n".join(batch))
                batch, size = [], 0
            batch.append(frame)
            size += len(frame) + 1
        if batch:
            await self._send_text(batch[0] if len(batch) == 1 else "\n".join(batch))

    async def _send_text(self, text: str) -> None:
        metrics.inc("ws_frames_out_total")
        # Written at once if the socket takes it (a pushed frame's bytes are then the ones made for
        # every connection); else the server's send, which waits until the socket is writable.
        if self.delivery is not None and not self.closing and self.delivery.direct_send(text):
            return
        await self.send_frame({"type": "websocket.send", "text": text})
