"""One process's link to Redis: a client for commands, and pub/sub connections kept subscribed.

Each subscription connection is read by one task that reconnects forever (after 0.2 s, doubling to
1 s, so that data flows again within about a second of Redis coming back), resubscribes to every
channel wanted, and then says which channels it restored (``on_restored``): whatever was published
on them meanwhile was missed, and the layer's consumers catch up from history. Subscribing waits
(briefly) for Redis to confirm, so that a consumer that joined a group really receives what is
published next.

One server and a Sentinel-watched master (``echo.layer.redis_target``) need one subscription connection
(after a failover it reconnects to the master the Sentinels name). A Cluster delivers each channel
only on the shard that owns its hash slot (sharded pub/sub), so ``ShardedRedisLink`` keeps one
connection per shard it needs, and moves a shard's channels to whichever node owns them after a
failover or a slot migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from echo.layer.redis_target import RedisTarget

logger = logging.getLogger(__name__)

# How long a subscription waits for Redis to confirm it before letting the caller go on.
SUBSCRIBE_CONFIRM_TIMEOUT = 2.0
RECONNECT_BACKOFF_FIRST = 0.2
RECONNECT_BACKOFF_CAP = 1.0

OnMessage = Callable[[str, bytes, bool], None]  # (Redis channel, payload, more messages waiting)
OnRestored = Callable[[Collection[str]], None]  # channels subscribed again after an outage


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


class Subscriber:
    """One pub/sub connection, kept subscribed to ``wanted`` by a reader task that reconnects.

    ``sharded`` uses SSUBSCRIBE (one command per channel: a Cluster refuses one that spans slots).
    ``on_failed``, if given, is awaited after each failed attempt, before the next: a Cluster link
    moves channels to their new owner there. ``on_moved(channel)`` is called when the server drops
    a sharded subscription itself (its slot now lives elsewhere).
    """

    def __init__(
        self,
        connect: Callable[[], PubSub],
        where: str,
        on_message: OnMessage,
        on_restored: OnRestored,
        on_disconnected: Callable[[], None],
        *,
        sharded: bool = False,
        on_failed: Callable[[Subscriber], Awaitable[None]] | None = None,
        on_moved: Callable[[str], None] | None = None,
    ) -> None:
        self.connect = connect
        self.where = where  # for log lines: never holds a password
        self.on_message = on_message
        self.on_restored = on_restored
        self.on_disconnected = on_disconnected
        self.sharded = sharded
        self.on_failed = on_failed
        self.on_moved = on_moved
        self.wanted: set[str] = set()  # Redis channels to be subscribed to
        self._message_type = "smessage" if sharded else "message"
        self._confirm_type = "ssubscribe" if sharded else "subscribe"
        self._pubsub: PubSub | None = None
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
            await self._send_subscribe(self._pubsub, [channel])
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
            if self.sharded:
                await self._pubsub.sunsubscribe(channel)
            else:
                await self._pubsub.unsubscribe(channel)
        except (RedisError, OSError) as exc:
            logger.info("Unsubscribing from %s failed (%s); dropped on reconnect", channel, exc)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _send_subscribe(self, pubsub: PubSub, channels: Collection[str]) -> None:
        if not self.sharded:
            await pubsub.subscribe(*channels)
            return
        for channel in channels:  # one slot per SSUBSCRIBE; replies are read by the reader
            await pubsub.ssubscribe(channel)

    async def _read_forever(self) -> None:
        """Keep one subscription connection open, resubscribing after any failure, with backoff."""
        backoff = RECONNECT_BACKOFF_FIRST
        while self.wanted:  # with none, a shard's subscriber ends; subscribing starts it again
            pubsub = self.connect()
            try:
                restored = set(self.wanted)
                await self._send_subscribe(pubsub, restored)
                self._pubsub = pubsub
                while True:
                    raise_if_cancelling()
                    message = await pubsub.get_message(timeout=1.0)
                    while message is not None:
                        # With more already waiting, the fan-out holds this one back, so that each
                        # consumer gets what piled up at once and sends it in one frame.
                        following = await pubsub.get_message(timeout=0)
                        self._handle(message, following is not None)
                        if message["type"] == self._confirm_type and not self._connected.is_set():
                            self._connected.set()
                            backoff = RECONNECT_BACKOFF_FIRST
                            if self._failing:
                                self._failing = False
                                logger.warning("Redis at %s is back; subscriptions restored", self.where)
                                self.on_restored(restored)
                        message = following
            except (RedisError, OSError) as exc:
                if self._connected.is_set():
                    self.on_disconnected()
                self._connected.clear()
                self._failing = True
                logger.warning(
                    "Redis at %s unreachable (%s); live messages are missed until it is back, "
                    "retrying in %.1f s",
                    self.where,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_CAP)
                if self.on_failed is not None:
                    await self.on_failed(self)
            finally:
                self._pubsub = None
                self._connected.clear()
                await _close_quietly(pubsub)

    def _handle(self, message: dict[str, Any], more_waiting: bool) -> None:
        kind = message["type"]
        name = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        if kind == self._message_type:
            self.on_message(name, message["data"], more_waiting)
        elif kind == self._confirm_type:
            confirmed = self._confirmations.pop(name, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == "sunsubscribe" and name in self.wanted and self.on_moved is not None:
            self.on_moved(name)  # the server dropped it: the slot moved (we did not ask)


class RedisLink:
    """The Redis connections of one event loop (one server, or a Sentinel-watched master)."""

    def __init__(
        self,
        target: RedisTarget,
        connection_kwargs: dict[str, Any],
        on_message: OnMessage,
        on_restored: OnRestored,
        on_disconnected: Callable[[], None],
    ) -> None:
        self.redis: Any = target.async_client(**connection_kwargs)
        self._subscription_client = target.subscription_client(**connection_kwargs)
        self.subscriber = Subscriber(
            self._subscription_client.pubsub, redact_url(target.url), on_message, on_restored, on_disconnected
        )

    async def publish(self, channel: str, payload: bytes) -> None:
        await self.redis.publish(channel, payload)

    async def until_subscribed(self, channel: str) -> None:
        """Subscribe to ``channel`` if not yet; else wait (briefly) while its connection is being made."""
        if channel in self.subscriber.wanted:
            await self.subscriber.until_connected()
        else:
            await self.subscriber.subscribe(channel)

    async def subscribe(self, channel: str) -> None:
        await self.subscriber.subscribe(channel)

    async def until_confirmed(self, channel: str) -> None:
        await self.subscriber.until_confirmed(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.subscriber.unsubscribe(channel)

    async def close(self) -> None:
        await self.subscriber.close()
        await _close_quietly(self._subscription_client)
        await _close_quietly(self.redis)


class ShardedRedisLink:
    """The Redis connections of one event loop on a Cluster: commands, and a subscriber per shard.

    A channel is subscribed on the node that owns its hash slot (per the cluster client's slot map).
    When a shard's connection fails, its channels are looked up again once the map is refreshed: a
    promoted replica gets them, and they are resynced (``on_restored``) like any reconnection.
    """

    def __init__(
        self,
        target: RedisTarget,
        connection_kwargs: dict[str, Any],
        on_message: OnMessage,
        on_restored: OnRestored,
        on_disconnected: Callable[[], None],
    ) -> None:
        self.target = target
        self.connection_kwargs = connection_kwargs
        self.redis: Any = target.async_client(**connection_kwargs)
        self.on_message = on_message
        self.on_restored = on_restored
        self.on_disconnected = on_disconnected
        self.subscribers: dict[str, Subscriber] = {}  # node name ("host:port") -> its subscriber
        self._owner: dict[str, str] = {}  # channel -> node name it is subscribed on
        self._moving: set[asyncio.Task[None]] = set()

    async def publish(self, channel: str, payload: bytes) -> None:
        await self.redis.spublish(channel, payload)

    async def until_subscribed(self, channel: str) -> None:
        """Subscribe to ``channel`` if not yet; else wait (briefly) while its shard's connection is made."""
        name = self._owner.get(channel)
        if name is None:
            await self.subscribe(channel)
        elif name in self.subscribers:
            await self.subscribers[name].until_connected()

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the shard that owns ``channel``; returns at once if the Cluster is unreachable."""
        try:
            subscriber = await self._subscriber_for(channel)
        except (RedisError, OSError) as exc:
            logger.warning("No shard for %s yet (%s); retried when the Cluster answers", channel, exc)
            self._park(channel)
            return
        await subscriber.subscribe(channel)

    async def until_confirmed(self, channel: str) -> None:
        name = self._owner.get(channel)
        if name is not None and name in self.subscribers:
            await self.subscribers[name].until_confirmed(channel)

    async def unsubscribe(self, channel: str) -> None:
        name = self._owner.pop(channel, None)
        subscriber = self.subscribers.get(name) if name is not None else None
        if subscriber is not None:
            await subscriber.unsubscribe(channel)

    async def close(self) -> None:
        for task in list(self._moving):
            task.cancel()
        for subscriber in list(self.subscribers.values()):
            await subscriber.close()
        await _close_quietly(self.redis)

    async def _subscriber_for(self, channel: str) -> Subscriber:
        """The subscriber of the node owning ``channel`` now (made on first use); records the owner."""
        await self.redis.initialize()
        node = self.redis.get_node_from_key(channel)
        subscriber = self.subscribers.get(node.name)
        if subscriber is None:
            client = self.target.node_client(node.host, node.port, **self.connection_kwargs)
            subscriber = self.subscribers[node.name] = Subscriber(
                client.pubsub,
                f"cluster node {node.name}",
                self.on_message,
                self.on_restored,
                self.on_disconnected,
                sharded=True,
                on_failed=functools.partial(self._shard_failed, node.name),
                on_moved=self._moved,
            )
        self._owner[channel] = node.name
        return subscriber

    async def _shard_failed(self, name: str, failed: Subscriber) -> None:
        """After node ``name``'s connection failed: move its channels to their owners now, if others."""
        channels = list(failed.wanted)
        try:
            await self._refresh_slots(channels)
        except (RedisError, OSError) as exc:
            logger.info("Cluster slot map not refreshed yet (%s)", exc)
            return
        moved = [channel for channel in channels if self.redis.get_node_from_key(channel).name != name]
        for channel in moved:
            failed.wanted.discard(channel)
        await self._resubscribe(moved, refreshed=True)

    async def _refresh_slots(self, channels: Collection[str]) -> None:
        """Have the cluster client learn who owns each of these channels' slots now.

        A keyed command per slot: redis-py follows a MOVED reply (a slot migrated) and reloads the
        whole slot map after a node stopped answering (a failover), so ``get_node_from_key`` is current.
        """
        for channel in {self.redis.keyslot(channel): channel for channel in channels}.values():
            await self.redis.exists(channel)

    def _moved(self, channel: str) -> None:
        """A node dropped our subscription to ``channel`` (its slot moved): follow it."""
        name = self._owner.get(channel)
        if name is not None and name in self.subscribers:
            self.subscribers[name].wanted.discard(channel)
        self._park(channel)

    def _park(self, channel: str) -> None:
        """Subscribe ``channel`` again in the background, until its owner can be reached."""
        self._owner[channel] = ""
        task = asyncio.get_running_loop().create_task(self._resubscribe([channel]))
        self._moving.add(task)
        task.add_done_callback(self._moving.discard)

    async def _resubscribe(self, channels: list[str], *, refreshed: bool = False) -> None:
        """Subscribe ``channels`` on their owners, retrying until done, then have them resynced."""
        backoff = RECONNECT_BACKOFF_FIRST
        pending = list(channels)
        while pending:
            try:
                if not refreshed:
                    await self._refresh_slots(pending)
                refreshed = False  # the next attempt asks again
                for channel in list(pending):
                    if channel not in self._owner:
                        pending.remove(channel)  # unsubscribed meanwhile
                        continue
                    subscriber = await self._subscriber_for(channel)
                    await subscriber.subscribe(channel)
                    pending.remove(channel)
            except (RedisError, OSError) as exc:
                logger.info("Moving subscriptions to their new shard failed (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_CAP)
        if channels:
            self.on_restored(channels)


async def _close_quietly(closable: Any) -> None:
    with contextlib.suppress(RedisError, OSError, RuntimeError):
        await closable.aclose()
