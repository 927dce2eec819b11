"""The WebSocket consumer: echoes every frame back and relays the data of the topics its client follows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from echo import connections, metrics
from echo.connections import DIRECT_SEND_TEXT
from echo.limits import FrameRateLimit, per_address
from echo.presence import presence_for
from echo.protocol import RELAY_EVENT, error_frame, group_topic, topic_group
from echo.streams import TopicStreams, Verdict
from echo.subscription import CLOSE_POLICY_VIOLATION, ClientError, Subscription, parse_subscription

logger = logging.getLogger(__name__)

# RFC 6455 close codes: "try again later" (the server could not keep up with this client) and
# "message too big".
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOO_BIG = 1009

# Replayed history goes out in text frames of at most this many characters, newline-separated.
BATCH_CHARS = 64 * 1024


class EchoConsumer(AsyncWebsocketConsumer):
    """One WebSocket connection: an echo of what the client sends, plus live data of chosen topics.

    On connect the client gets recent history (or exactly what it missed, with ``since``), then live
    frames, with no gap and no duplicate between the two. Nothing a client sends reaches anyone else.
    """

    subscription: Subscription
    streams: TopicStreams
    joined = False
    closing = False
    history_unavailable = False  # the last attempt to read history failed
    counted_address: str | None = None
    # The task handling queued layer events, while there are any (see _events_queued).
    _drainer: asyncio.Task[None] | None = None
    _direct_send: Callable[[str], bool]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the connection: client frames and channel-layer events, handled one at a time.

        Replaces Channels' ``await_many_dispatch``, which makes a task and an ``asyncio.wait`` per
        message (over half the server's CPU at 1,000 clients x 50 messages/s). Here one loop reads
        the client; layer events are handled by a task that exists only while events are queued;
        a lock keeps handlers strictly one at a time, as Channels does; and layer events already
        waiting are handled together, so a client that fell behind gets one frame carrying all it
        missed instead of one frame per message. On the production server, the layer writes pushed
        messages to an idle connection itself (``_deliver_directly``), so most messages never start
        a task at all. An idle connection has no task of its own besides the server's.
        """
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self._connection = asyncio.current_task()
        self._turn = asyncio.Lock()
        self.channel_layer.on_queued(self.channel_name, self._events_queued)
        direct_send = (scope.get("extensions") or {}).get(DIRECT_SEND_TEXT)
        if direct_send is not None:
            self._direct_send = direct_send
            self.channel_layer.set_direct_delivery(self.channel_name, self._deliver_directly)
        self.rate = FrameRateLimit(
            rate=settings.WS_RATE_LIMIT, burst=settings.WS_RATE_BURST, max_strikes=settings.WS_RATE_STRIKES
        )
        try:
            while True:
                message = await receive()
                async with self._turn:
                    await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            # Forgotten first, so that nothing more is queued and no new drainer starts.
            await self.channel_layer.forget_channel(self.channel_name)
            if self._drainer is not None:
                self._drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._drainer

    def _deliver_directly(self, event: dict[str, Any]) -> bool:
        """Called by the layer's reader with a new event while this consumer's queue is empty.

        Sends a pushed message right away, without waking this connection's task, when nothing else
        is in progress or pending here (a handler running holds ``_turn``; queued events have a
        drainer until they are sent) and it is simply the next frame of its stream; returns False to
        have it queued, so that order is kept and anything else is handled by ``handle_layer_events``.
        """
        if event["type"] != RELAY_EVENT or self._drainer is not None or self._turn.locked() or self.closing:
            return False
        seq = event.get("seq")
        if seq is None:  # not part of a stream (presence)
            sent: bool = self._direct_send(event["text"])
            if sent:
                metrics.inc("ws_frames_out_total")
            return sent
        group, epoch = event["group"], event["epoch"]
        verdict = self.streams.check(group, epoch, seq)
        if verdict is Verdict.DUPLICATE:
            return True
        if verdict is Verdict.RECOVER or not self._direct_send(event["text"]):
            return False
        self.streams.advance(group, epoch, seq)
        metrics.inc("ws_messages_relayed_total")
        metrics.inc("ws_frames_out_total")
        return True

    def _events_queued(self) -> None:
        """Called by the layer when this consumer's queue stops being empty: start draining, if not yet."""
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain_layer_events())

    async def _drain_layer_events(self) -> None:
        """Handle queued layer events, batch by batch, until none is left; then end."""
        layer, channel = self.channel_layer, self.channel_name
        try:
            while events := layer.receive_nowait_all(channel):
                async with self._turn:
                    await self.handle_layer_events(events)
        except Exception:
            # A bug, not the client's doing: end the connection rather than leave it deaf.
            logger.exception("Relaying to %s failed", self.scope.get("client"))
            metrics.inc("ws_errors_total", "relay")
            if self._connection is not None:
                self._connection.cancel()
        finally:
            self._drainer = None

    async def handle_layer_events(self, events: list[dict[str, Any]]) -> None:
        """Called with every layer event waiting: relay frames go out newline-joined in one frame."""
        texts: list[str] = []
        for event in events:
            if event["type"] != RELAY_EVENT:
                await self._relay(texts)  # what came before another event goes out before it
                texts = []
                await self.dispatch(event)
            elif "seq" not in event:
                texts.append(event["text"])  # not part of a stream (presence)
            elif (
                verdict := self.streams.check(event["group"], event["epoch"], event["seq"])
            ) is Verdict.SEND:
                self.streams.advance(event["group"], event["epoch"], event["seq"])
                texts.append(event["text"])
            elif verdict is Verdict.RECOVER:
                await self._relay(texts)
                texts = []
                # History holds this frame too (it is numbered before it is published), so catching up
                # sends it along with whatever was missed before it.
                await self.send_batched(await self.catch_up(event["group"]))
                if self.history_unavailable:
                    # Sending it would leave a hole: the client reconnects with since instead.
                    error = ClientError(
                        "history_unavailable", "history cannot be read", CLOSE_TRY_AGAIN_LATER
                    )
                    await self.refuse(error)
                    return
        await self._relay(texts)

    async def _relay(self, texts: list[str]) -> None:
        if texts and not self.closing:
            metrics.inc("ws_messages_relayed_total", amount=len(texts))
            await self.send_batched(texts)

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

    # ------------------------------------------------------------ connection lifecycle

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        """Called on the handshake: check the URL, catch up on each topic, join them, accept.

        History is read before joining, so the client's position is known before any live frame
        arrives; a frame published in between shows up as a hole before the first live frame, and
        is filled from history then (``TopicStreams``).
        """
        try:
            self.subscription = parse_subscription(
                self.scope.get("query_string", b""),
                default_history=settings.WS_HISTORY_DEFAULT,
                max_history=self.channel_layer.history_length,
            )
        except ClientError as error:
            await self.accept()
            await self.refuse(error)
            return
        address = (self.scope.get("client") or (None,))[0]
        cap = settings.WS_MAX_CONNECTIONS_PER_ADDRESS
        self.counted_address = per_address.try_add(address, cap)
        if self.counted_address is None and not per_address.exempt(address, cap):
            await self.accept()
            await self.refuse(
                ClientError(
                    "too_many_connections",
                    f"at most {settings.WS_MAX_CONNECTIONS_PER_ADDRESS} connections per address",
                    CLOSE_TRY_AGAIN_LATER,
                )
            )
            return
        self.groups = [topic_group(topic) for topic in self.subscription.topics]
        self.streams = TopicStreams(
            self.subscription.history,
            {topic_group(topic): position for topic, position in self.subscription.since.items()},
        )
        frames = [frame for group in self.groups for frame in await self.catch_up(group)]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        presence_for(self.channel_layer, settings.WS_PRESENCE_TTL).join(self.subscription.topics)
        self.joined = True
        connections.opened(self)
        metrics.inc("ws_connections_total")
        await self.send_batched(frames)

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, after the groups were left."""
        if self.joined:
            presence_for(self.channel_layer, settings.WS_PRESENCE_TTL).leave(self.subscription.topics)
            connections.closed(self)
        per_address.remove(self.counted_address)

    async def refuse(self, error: ClientError) -> None:
        """Tell the client what it got wrong, in an error frame, then close with the error's code."""
        logger.warning("Closing %s: %s: %s", self.scope.get("client"), error.code, error.detail)
        self.closing = True
        metrics.inc("ws_refused_total", error.code)
        metrics.inc("ws_closed_total", str(error.close_code))
        await self.send(text_data=error_frame(error.code, error.detail))
        await self.close(code=error.close_code, reason=error.code)

    # ------------------------------------------------------------ history

    async def catch_up(self, group: str) -> list[str]:
        """The frames the client is owed of ``group`` from history (``TopicStreams.catch_up``).

        If Redis cannot be read, returns none and leaves the client's position as it is: the
        layer's resync catches up once Redis is back, and a live frame that finds a hole first
        closes the connection with 1013 (see ``handle_layer_events``).
        """
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
        self.history_unavailable = False
        metrics.inc("ws_messages_replayed_total", amount=caught_up.replayed)
        if caught_up.reset:
            metrics.inc("ws_resets_total")
        return caught_up.frames

    async def send_frame(self, message: dict[str, Any]) -> None:
        """Send one ASGI ``websocket.send`` message: the hot path, without the base class's layers."""
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

    async def send_batched(self, frames: list[str]) -> None:
        """Send frames newline-joined in as few text frames as ``BATCH_CHARS`` allows."""
        if not frames:
            return
        if len(frames) == 1:
            metrics.inc("ws_frames_out_total")
            await self.send_frame({"type": "websocket.send", "text": frames[0]})
            return
        batch: list[str] = []
        size = 0
        for frame in frames:
            if batch and size + len(frame) > BATCH_CHARS:
                metrics.inc("ws_frames_out_total")
                await self.send_frame({"type": "websocket.send", "text": "\n".join(batch)})
                batch, size = [], 0
            batch.append(frame)
            size += len(frame) + 1
        if batch:
            metrics.inc("ws_frames_out_total")
            await self.send_frame({"type": "websocket.send", "text": "\n".join(batch)})

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
        if not self.rate.allow():
            metrics.inc("ws_dropped_total", "rate_limit")
            if self.rate.abusive:
                limit = settings.WS_RATE_LIMIT
                await self.refuse(
                    ClientError(
                        "rate_limited", f"more than {limit:g} frames/s, persistently", CLOSE_POLICY_VIOLATION
                    )
                )
            return
        metrics.inc("ws_frames_out_total")
        if text_data is not None:
            await self.send_frame({"type": "websocket.send", "text": text_data})
        else:
            await self.send_frame({"type": "websocket.send", "bytes": bytes_data})

    # ------------------------------------------------------------ channel-layer events

    async def layer_resync(self, event: dict[str, Any]) -> None:
        """Called after the server reconnected to Redis: send what was published while it was away.

        Redis may have come back with its data (the streams carry on: the missed frames are replayed)
        or without it (new epochs: a ``reset`` each, then the new streams from their start).
        """
        frames = [frame for group in self.groups for frame in await self.catch_up(group)]
        await self.send_batched(frames)

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
        await self.close(code=CLOSE_TRY_AGAIN_LATER, reason="too slow: messages dropped")
