"""The one way to publish data to connected browsers: through the channel layer, to a topic's group.

Each message (a frame of ``values``, or a JSON event: a name and any JSON value) is validated and
encoded to its JSON wire text once, here, and sent with the layer's
``group_send_numbered`` (``group_send`` plus a shared ``seq`` and history, see ``echo.layer.history``);
every server process receives it once from Redis and every consumer relays that text unchanged.
Usable from async code (``await apublish(...)``) and from sync code (``publish(...)``), neither of
which creates an event loop or a Redis pool per message.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer

from echo.conf import app_settings
from echo.layer.capabilities import capabilities
from echo.layer.history import valid_idempotency_key
from echo.protocol import (
    RELAY_EVENT,
    FrameError,
    Position,
    encode_data_frame,
    encode_data_frame_around_position,
    encode_event_data,
    encode_event_frame,
    encode_event_frame_around_position,
    relay_event,
    topic_group,
    validate_event,
    validate_topic,
    validate_values,
)

T = TypeVar("T")


class LayerNotShared(RuntimeError):
    """Raised when the configured channel layer cannot carry messages between processes."""


def shared_channel_layer() -> BaseChannelLayer:
    """Return the default channel layer, refusing one that other processes can never read."""
    layer = get_channel_layer()
    if layer is None:
        raise LayerNotShared("CHANNEL_LAYERS has no 'default' layer: there is nothing to publish to")
    if isinstance(layer, InMemoryChannelLayer):
        raise LayerNotShared(
            "the configured channel layer is InMemoryChannelLayer, which lives inside one process: "
            "the web server is another process and would never receive anything. "
            "Configure a Redis channel layer (set REDIS_URL)."
        )
    return layer


class Publisher:
    """Publishes data frames for topics through the channel layer.

    On this project's layer each frame's position comes from Redis: an ``epoch`` and a ``seq``
    counting within it, one stream per topic shared by every publisher, in the same order as live
    delivery and the topic's history (the layer's "numbered" extension). On another Channels layer
    the frame goes out with plain ``group_send``, without a position or history (``echo.layer.capabilities``).
    A failed publish (Redis unreachable) raises, and may or may not have gone out (the answer can be
    lost after Redis ran it): publish again with the same ``idempotency_key`` to get exactly one.
    """

    def __init__(self, layer: BaseChannelLayer | None = None) -> None:
        self.layer = layer if layer is not None else shared_channel_layer()
        self.numbered = capabilities(self.layer).numbered

    async def publish(
        self,
        topic: str,
        data: Any,
        ts: float | None = None,
        idempotency_key: str | None = None,
        event: str | None = None,
    ) -> Position:
        """Publish one message on ``topic``; return its position (``epoch``, ``seq``).

        Without ``event``, ``data`` is a frame's ``values`` (series name to number); with it, the
        message is a JSON event, ``{"event": event, "data": data}`` on the wire, ``data`` any JSON value
        within ``echo.protocol.encode_event_data``'s limits and ``MESSAGE_MAX_BYTES``.
        A second publish on ``topic`` with the same ``idempotency_key`` (``new_idempotency_key()``)
        within ``echo.layer.history.IDEMPOTENCY_SECONDS`` publishes nothing and returns the first one's
        position. The position is ``Position(None, 0)`` on a layer that does not number messages (and
        keeps no keys either). Raises ``FrameError`` for a bad topic, event name, values, data or key,
        and the layer's error (``redis.RedisError``, ``OSError``) when Redis cannot be reached.
        """
        validate_topic(topic)
        if event is None:
            checked = validate_values(data)
        else:
            validate_event(event)
            data_text = encode_event_data(data, app_settings.MESSAGE_MAX_BYTES)
        if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
            raise FrameError("an idempotency key is 1 to 200 printable ASCII characters without spaces")
        ts = time.time() if ts is None else ts
        if not self.numbered:
            text = (
                encode_data_frame(topic, ts, checked)
                if event is None
                else encode_event_frame(topic, ts, event, data_text)
            )
            await self.layer.group_send(topic_group(topic), relay_event(text))
            return Position(None, 0)
        parts = (
            encode_data_frame_around_position(topic, ts, checked)
            if event is None
            else encode_event_frame_around_position(topic, ts, event, data_text)
        )
        epoch, seq = await self.layer.group_send_numbered(
            topic_group(topic), RELAY_EVENT, parts, idempotency_key
        )
        return Position(epoch, seq)


def new_idempotency_key() -> str:
    """A fresh idempotency key: make one per message, and publish it again with the same one."""
    return secrets.token_urlsafe(16)


class _BackgroundLoop:
    """One event loop on a daemon thread, started on first use, that sync callers hand coroutines to.

    Keeping a single loop for the life of the process keeps a single Redis connection pool, where
    ``async_to_sync`` per call would make a loop, and with it a pool, per message.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coroutine.close()
            raise RuntimeError("publish() is for sync code; in async code use 'await apublish(...)'")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._get_loop())
        return future.result(timeout)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="echo-publish", daemon=True).start()
                self._loop = loop
            return self._loop


_default_publisher: Publisher | None = None
_background = _BackgroundLoop()


def _publisher() -> Publisher:
    global _default_publisher
    if _default_publisher is None:
        _default_publisher = Publisher()
    return _default_publisher


async def apublish(
    topic: str, data: Any, idempotency_key: str | None = None, *, event: str | None = None
) -> Position:
    """Publish on ``topic`` from async code; return the frame's position (epoch, seq).

    ``data`` is an object of numbers (a ``values`` frame), or with ``event`` any JSON value (a JSON
    event). To retry a failed publish safely, give it an ``idempotency_key`` and retry with the same key.
    """
    return await _publisher().publish(topic, data, idempotency_key=idempotency_key, event=event)


def group_send_from_sync(group: str, message: dict[str, Any], timeout: float = 10.0) -> None:
    """Send a control event (not data: no number, no history) to a group from sync code, on the
    same background loop as ``publish``."""
    layer = get_channel_layer()
    if layer is not None:
        _background.run(layer.group_send(group, message), timeout)


def publish(
    topic: str,
    data: Any,
    timeout: float = 10.0,
    idempotency_key: str | None = None,
    *,
    event: str | None = None,
) -> Position:
    """Publish on ``topic`` from sync code (a view, a signal, a script); return its position.

    ``data`` is an object of numbers (a ``values`` frame), or with ``event`` any JSON value (a JSON
    event: ``publish("orders", {"id": 7}, event="created")``). Blocks until Redis has the message or
    ``timeout`` seconds pass (``TimeoutError``). To retry a failed publish safely, give it an
    ``idempotency_key`` and retry with the same key.
    """
    coroutine = _publisher().publish(topic, data, idempotency_key=idempotency_key, event=event)
    return _background.run(coroutine, timeout)
