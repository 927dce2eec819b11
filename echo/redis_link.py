"""One process's link to Redis: a pool for commands, and one pub/sub connection kept subscribed.

The subscription connection is read by one task that reconnects forever (after 0.2 s, doubling to
1 s, so that data flows again within about a second of Redis coming back), resubscribes to every
channel wanted, and then says so (``on_reconnected``): whatever was published meanwhile was missed,
and the layer's consumers catch up from history. Subscribing waits (briefly) for Redis to confirm,
so that a consumer that joined a group really receives what is published next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# How long a subscription waits for Redis to confirm it before letting the caller go on.
SUBSCRIBE_CONFIRM_TIMEOUT = 2.0
RECONNECT_BACKOFF_FIRST = 0.2
RECONNECT_BACKOFF_CAP = 1.0

OnMessage = Callable[[str, bytes, bool], None]  # (Redis channel, payload, more messages waiting)


def redact_url(url: str) -> str:
    """Return a Redis URL with any password replaced, for log lines and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{location}" if user else f"{scheme}://***@{location}"


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task was asked to stop.

    redis-py can swallow a cancellation that lands inside a command; a loop that keeps going after
    that would never stop (and hang the event loop's shutdown), so long-running loops check here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisLink:
    """The Redis connections of one event loop, and the reader of its subscriptions."""

    def __init__(
        self,
        url: str,
        connection_kwargs: dict[str, Any],
        on_message: OnMessage,
        on_reconnected: Callable[[], None],
        on_disconnected: Callable[[], None],
    ) -> None:
        self.url = url
        # A blocking pool makes a burst of publishers wait for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(url, **connection_kwargs)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.on_message = on_message
        self.on_reconnected = on_reconnected
        self.on_disconnected = on_disconnected
        self.wanted: set[str] = set()  # Redis channels to be subscribed to
        self._pubsub: aioredis.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        # True from a failed connection until the next success: subscribing then does not wait.
        self._failing = False

    async def until_connected(self) -> bool:
        """Start the reader if needed and wait briefly until it is subscribed; True if it is.

        Returns at once while Redis is known to be down, so that consumers are never held up by it.
        """
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_forever(), name="redis-reader")
        if self._connected.is_set():
            return True
        if self._failing:
            return False
        try:
            await asyncio.wait_for(self._connected.wait(), SUBSCRIBE_CONFIRM_TIMEOUT)
        except TimeoutError:
            return False
        return True

    async def subscribe(self, channel: str) -> None:
        """Subscribe to a Redis channel and wait (briefly) until Redis confirms it.

        If Redis is unreachable, returns at once: the reader subscribes once it is back.
        """
        self.wanted.add(channel)
        if not await self.until_connected() or self._pubsub is None:
            return
        confirmed = self._confirmations.get(channel)
        if confirmed is None:
            confirmed = self._confirmations[channel] = asyncio.get_running_loop().create_future()
        try:
            await self._pubsub.subscribe(channel)
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_CONFIRM_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as exc:
            logger.warning("Subscription to %s not confirmed yet (%r); the reader retries", channel, exc)

    async def until_confirmed(self, channel: str) -> None:
        """Wait (briefly) for a subscription another caller asked for, if it is not confirmed yet."""
        pending = self._confirmations.get(channel)
        if pending is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pending), SUBSCRIBE_CONFIRM_TIMEOUT)

    async def unsubscribe(self, channel: str) -> None:
        self.wanted.discard(channel)
        if self._pubsub is None or not self._connected.is_set():
            return
        try:
            await self._pubsub.unsubscribe(channel)
        except (RedisError, OSError) as exc:
            logger.info("Unsubscribing from %s failed (%s); dropped on reconnect", channel, exc)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await _close_quietly(self.redis)

    async def _read_forever(self) -> None:
        """Keep one subscription connection open, resubscribing after any failure, with backoff."""
        backoff = RECONNECT_BACKOFF_FIRST
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(*self.wanted)
                self._pubsub = pubsub
                while True:
                    raise_if_cancelling()
                    message = await pubsub.get_message(timeout=1.0)
                    while message is not None:
                        # More already waiting means we are behind: the fan-out then queues rather
                        # than writes directly, so that each consumer sends what piled up in one frame.
                        following = await pubsub.get_message(timeout=0)
                        self._handle(message, following is not None)
                        if message["type"] == "subscribe" and not self._connected.is_set():
                            self._connected.set()
                            backoff = RECONNECT_BACKOFF_FIRST
                            if self._failing:
                                self._failing = False
                                logger.warning(
                                    "Redis at %s is back; subscriptions restored", redact_url(self.url)
                                )
                                self.on_reconnected()
                        message = following
            except (RedisError, OSError) as exc:
                if self._connected.is_set():
                    self.on_disconnected()
                self._connected.clear()
                self._failing = True
                logger.warning(
                    "Redis at %s unreachable (%s); live messages are missed until it is back, "
                    "retrying in %.1f s",
                    redact_url(self.url),
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_CAP)
            finally:
                self._pubsub = None
                self._connected.clear()
                await _close_quietly(pubsub)

    def _handle(self, message: dict[str, Any], behind: bool) -> None:
        kind = message["type"]
        name = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        if kind == "subscribe":
            confirmed = self._confirmations.pop(name, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == "message":
            self.on_message(name, message["data"], behind)


async def _close_quietly(closable: Any) -> None:
    with contextlib.suppress(RedisError, OSError, RuntimeError):
        await closable.aclose()
