"""A Redis pub/sub channel layer that fans group messages out to local members without per-member work.

Why not channels-redis as it is (docs/architecture.md and docs/benchmarks.md have the measurements):

* ``RedisChannelLayer`` (the core layer) stores one copy of every group message per member in Redis
  lists, and each consumer blocks in ``BZPOPMIN`` on its own key: the cost grows with clients x
  messages, messages for a consumer more than ``capacity`` behind are dropped with an INFO log only, and
  members silently leave a group after ``group_expiry``.
* ``RedisPubSubChannelLayer`` publishes a group message once and each server process receives it once,
  but it SUBSCRIBEs once per consumer, deserialises once per member, and queues without bound.

This layer keeps the pub/sub shape and removes the per-member work: a process subscribes once per group
with members in it (plus once for its own specific channels), deserialises each message once, and hands
the same event dict to each local member (``fanout``). Handlers must not mutate an event. It is
assembled from three parts of this package, one concern each: ``redis_link`` (the connections and the
reader that reconnects), ``fanout`` (local channels, groups, bounded queues) and ``history``
(numbered messages and their history: the "numbered" extension).

Limits, on purpose:

* At-most-once live delivery, like every Channels layer: a process disconnected from Redis misses what
  is published meanwhile, and says so to its consumers (``RESYNC_EVENT``) when it is back, so that
  they catch up from history. Group membership is live (no ``group_expiry``).
* Each channel holds at most ``capacity`` events; past that its consumer gets ``OVERFLOW_EVENT``.

Redis may be one server, a Sentinel-watched master or a Cluster (``echo.layer.redis_target``). Every Redis
name of a group carries the group as a hash tag, so on a Cluster a group's channel and keys share one
shard; there live messages use sharded pub/sub and each process subscribes on the shards it needs.
"""

from __future__ import annotations

import asyncio
import functools
import types
import uuid
import weakref
from collections.abc import Callable, Collection
from types import MappingProxyType
from typing import Any

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from echo.layer.capabilities import ATTACH, NUMBERED, SHARED_STATE
from echo.layer.events import RESYNC_EVENT
from echo.layer.fanout import Event, Events, FanoutStats, Lane, LocalFanout
from echo.layer.history import History, HistoryStore, group_key
from echo.layer.redis_link import RedisLink, ShardedRedisLink
from echo.layer.redis_target import parse_redis_url


class LayerStats(FanoutStats):
    """Counters a process exposes about its layer: what was published, received, delivered, dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.published = 0
        self.received = 0
        self.redis_disconnects = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class _LoopState:
    """Everything the layer holds for one event loop: its channels, its Redis link, its history."""

    def __init__(self, layer: RedisFanoutChannelLayer) -> None:
        self.token = uuid.uuid4().hex[:16]
        self.fanout = LocalFanout(layer.stats)
        # The reader's callbacks get this state bound: no per-message lookup of the running loop's.
        link_class = ShardedRedisLink if layer.target.sharded else RedisLink
        self.link = link_class(
            layer.target,
            layer.connection_kwargs,
            functools.partial(layer._on_message, self),
            functools.partial(layer._on_restored, self),
            layer._on_disconnected,
        )
        self.history = HistoryStore(
            self.link.redis,
            layer.prefix,
            layer.history_length,
            layer.history_ttl,
            "SPUBLISH" if layer.target.sharded else "PUBLISH",
        )


class RedisFanoutChannelLayer(BaseChannelLayer):
    """Channel layer over Redis pub/sub: one PUBLISH per group message, one delivery per process."""

    # Channels' own, and this project's (echo.layer.capabilities says what each offers).
    extensions = ["groups", "flush", NUMBERED, SHARED_STATE, ATTACH]

    def __init__(
        self,
        hosts: list[str] | None = None,
        *,
        prefix: str = "asgi",
        capacity: int = 100,
        expiry: int = 60,
        channel_capacity: dict[str, int] | None = None,
        socket_timeout: float = 10.0,
        socket_connect_timeout: float = 5.0,
        health_check_interval: float = 15.0,
        max_connections: int = 64,
        history_length: int = 5000,
        history_ttl: int = 86400,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        hosts = hosts or ["redis://127.0.0.1:6379/0"]
        if len(hosts) != 1 or not isinstance(hosts[0], str):
            raise ValueError("RedisFanoutChannelLayer takes exactly one Redis URL in 'hosts'")
        self.url = hosts[0]
        self.target = parse_redis_url(self.url)  # a malformed URL fails here, at startup
        self.prefix = prefix
        # What group and inbox channels start with, up to the hash tag's opening brace.
        self._inbox_prefix = self.inbox_channel("")[:-1]
        self._group_prefix = self.group_channel("")[:-1]
        self.connection_kwargs = {
            # Commands (PUBLISH) give up after this; subscriptions are read with their own timeout.
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "socket_keepalive": True,
            "health_check_interval": health_check_interval,
            "max_connections": max_connections,
            "timeout": socket_connect_timeout,
        }
        self.history_length = history_length
        self.history_ttl = history_ttl
        self.stats = LayerStats()
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    # ---------------------------------------------------------------- names

    def inbox_channel(self, token: str) -> str:
        """The Redis channel one process listens on for messages sent to its specific channels."""
        return group_key(self.prefix, "inbox", token)

    def group_channel(self, group: str) -> str:
        """The Redis channel a group's messages are published on (hash-tagged: the group's shard)."""
        return group_key(self.prefix, "group", group)

    def group_key(self, kind: str, group: str) -> str:
        """The name of a Redis key kept for a group (presence, say), on the group's shard."""
        return group_key(self.prefix, kind, group)

    # ---------------------------------------------------------------- channel layer API

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Create a local channel; its name routes ``send`` from any process to this one."""
        state = self._state()
        name = f"{prefix}{state.token}!{uuid.uuid4().hex[:12]}"
        state.fanout.add_channel(name, self.get_capacity(name))
        await state.link.until_subscribed(self.inbox_channel(state.token))
        return name

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send to a specific channel: directly if it lives in this process, else through Redis."""
        self.require_valid_channel_name(channel)
        state = self._state()
        local = state.fanout.channels.get(channel)
        if local is not None:
            if len(local.events) >= local.capacity:
                raise ChannelFull(channel)
            local.put(message)
            return
        token = channel.partition("!")[0].rpartition(".")[2]
        if "!" not in channel or not token:
            raise ValueError(f"{channel!r} is not a specific channel made by new_channel()")
        payload = msgpack.packb([channel, message], use_bin_type=True)
        await state.link.publish(self.inbox_channel(token), payload)

    async def receive(self, channel: str) -> Event:
        """Return the next event for a local channel, waiting for one.

        Cancelling the wait (which is how Channels stops a consumer) forgets the channel and its
        group memberships, so a consumer that died uncleanly is not fed forever.
        """
        state = self._state()
        local = state.fanout.channels.get(channel)
        if local is None:
            # Channels may call receive() again on a consumer's channel while tearing it down.
            local = state.fanout.add_channel(channel, self.get_capacity(channel))
        try:
            while not local.events:
                local.waiter = asyncio.get_running_loop().create_future()
                await local.waiter
                local.waiter = None
        except asyncio.CancelledError:
            await self.forget_channel(channel)
            raise
        return local.events.pop(0)

    async def group_add(self, group: str, channel: str) -> None:
        """Add a local channel to a group; the process subscribes to the group on its first member.

        Returns once Redis confirmed the subscription: every message published to the group from then
        on reaches this process. (The consumer reads history before joining: a message published in
        between arrives as a hole before the first live one, and is read from history then.) If Redis
        is unreachable, returns at once: the reader subscribes when Redis comes back.
        """
        self.require_valid_group_name(group)
        state = self._state()
        if state.fanout.join(group, channel):
            await state.link.subscribe(self.group_channel(group))
        else:
            # Another member's subscription may be on its way: this member is only "in" once it is done.
            await state.link.until_confirmed(self.group_channel(group))

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove a channel from a group; the process unsubscribes when the last member leaves."""
        state = self._state()
        if state.fanout.leave(group, channel):
            await state.link.unsubscribe(self.group_channel(group))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish a message to every member of a group, in every process: serialised once."""
        self.require_valid_group_name(group)
        payload = msgpack.packb(message, use_bin_type=True)
        await self._state().link.publish(self.group_channel(group), payload)
        self.stats.published += 1

    async def flush(self) -> None:
        """Forget every channel and group of this loop and close its Redis connections."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.link.close()

    # ---------------------------------------------------------------- for consumers that do not wait

    def attach(
        self, channel: str, on_queued: Callable[[], None], direct: Callable[[Events], bool] | None = None
    ) -> None:
        """Have a local channel's consumer called back instead of waiting in ``receive``.

        ``on_queued()`` is called when an event is queued while the queue was empty; the consumer must
        then take events (``receive_nowait_all``) until none is left, since events queued meanwhile
        do not call it again. ``direct(events)``, if given, is offered new events first while the
        queue is empty (a run of one group's, in order, one object for every member), and returns
        True if it handled them all (it must not block, and must return False when it cannot take
        them now: they are queued, which keeps them in order). Both run in the layer's reader. A
        consumer attached this way must call ``forget_channel`` when it ends.
        """
        local = self._state().fanout.channels.get(channel)
        if local is not None:
            local.on_queued, local.direct = on_queued, direct

    def set_lane(self, group: str, lane: Lane | None) -> None:
        """Have ``lane(events)`` offered each run of ``group``'s events in this process before its
        members are (``echo.layer.fanout``); it returns the names of the local channels it wrote them
        to, which are then skipped, or None. ``None`` takes the lane away."""
        self._state().fanout.set_lane(group, lane)

    def pace(self, channel: str, max_rate: float) -> None:
        """Pass a local channel at most ``max_rate`` numbered events per second of each group it joins
        from now on: the newest when one is due (``echo.layer.conflation``), paced once per process for
        every channel of the same group and rate."""
        local = self._state().fanout.channels.get(channel)
        if local is not None:
            local.max_rate = max_rate

    def receive_nowait_all(self, channel: str) -> list[Event]:
        """Take every event already waiting for a local channel, without waiting (for batching)."""
        local = self._state().fanout.channels.get(channel)
        return local.take_all() if local is not None and local.events else []

    async def forget_channel(self, channel: str) -> None:
        """Drop a local channel and its group memberships, when its consumer ends."""
        state = self._state()
        for group in state.fanout.forget(channel):
            await state.link.unsubscribe(self.group_channel(group))

    # ---------------------------------------------------------------- numbered extension

    async def group_send_numbered(
        self, group: str, event_type: str, text: tuple[str, str, str], idempotency_key: str | None = None
    ) -> tuple[str, int]:
        """Number a text message for ``group``, keep it in the group's history, publish it.

        ``text`` is the message around its position: ``(before_epoch, between, after_seq)``. Returns
        the position, ``(epoch, seq)``: ``seq`` rises by one per group across all publishers within
        one epoch; a new epoch starts at 1 when Redis no longer has the group's counter. Members
        receive ``{"type": event_type, "text": ..., "seq": seq, "epoch": epoch, "group": group}``.
        A second send with the same ``idempotency_key`` within ``echo.layer.history.IDEMPOTENCY_SECONDS``
        returns the first one's position and sends nothing.
        """
        self.require_valid_group_name(group)
        state = self._state()
        position = await state.history.send(
            group, self.group_channel(group), event_type, text, idempotency_key
        )
        self.stats.published += 1
        return position

    async def group_history(self, group: str, *, after: int | None = None, last: int = 0) -> History:
        """The group's position and kept texts: ``after`` a seq of its epoch, else the newest ``last``.

        Read in one transaction; identical concurrent reads share one round trip (``echo.layer.history``).
        """
        return await self._state().history.read(group, after=after, last=last)

    async def numbered_groups(self) -> list[tuple[str, int]]:
        """Groups that received a numbered message within ``history_ttl``, with their current numbers."""
        return await self._state().history.groups()

    # ---------------------------------------------------------------- for presence and probes

    def group_send_local(self, group: str, message: dict[str, Any]) -> None:
        """Deliver a message to this process's members of ``group`` only, without Redis (read-only: one
        event for every member)."""
        self._state().fanout.deliver_to_group(group, (MappingProxyType(dict(message)),))

    def redis(self) -> Any:
        """This event loop's Redis client, for features that keep shared state next to the layer.

        A ``redis.asyncio.Redis``, or a ``RedisCluster`` on a Cluster: keys of one group must then be
        named with ``group_key`` (one shard).
        """
        return self._state().link.redis

    async def ping(self) -> None:
        """Raise ``RedisError`` or ``OSError`` if Redis cannot be reached from this process now.

        On a Cluster, one node answering is enough: a shard in failover stops only its own groups.
        """
        await self._state().link.redis.ping()

    def local_member_count(self, group: str) -> int:
        """How many channels of this process (and loop) are members of ``group``."""
        return len(self._state().fanout.groups.get(group, ()))

    # ---------------------------------------------------------------- internals

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(self)
            self._close_with_loop(loop)
        return state

    def _close_with_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close this loop's Redis connections when the loop closes (as channels-redis does)."""
        original_close = loop.close

        def close(this: asyncio.AbstractEventLoop) -> None:
            state = self._states.pop(this, None)
            if state is not None and not this.is_running():
                this.run_until_complete(state.link.close())
            this.close = original_close  # type: ignore[method-assign]
            original_close()

        loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]

    def _on_message(self, state: _LoopState, redis_channel: str, data: bytes, more_waiting: bool) -> None:
        """Called by the reader with each message: unpacked once, handed to the local members (a
        group's together with the ones waiting behind it, ``LocalFanout.collect``)."""
        self.stats.received += 1
        fanout = state.fanout
        if redis_channel.startswith(self._inbox_prefix):
            fanout.flush()  # group events that came first go first
            target, event = msgpack.unpackb(data, raw=False)
            fanout.deliver([target], (event,))
            return
        group = redis_channel[len(self._group_prefix) : -1]  # between the hash tag's braces
        if group in fanout.groups:  # one event for every member: read-only
            fanout.collect(group, MappingProxyType(msgpack.unpackb(data, raw=False)), more_waiting)

    def _on_restored(self, state: _LoopState, redis_channels: Collection[str]) -> None:
        """Called when channels are subscribed again after an outage: what was published was missed.

        Told to the members of those groups (on a Cluster, one shard's); the others lost nothing.
        """
        members: set[str] = set()
        for redis_channel in redis_channels:
            if redis_channel.startswith(self._group_prefix):
                members.update(state.fanout.groups.get(redis_channel[len(self._group_prefix) : -1], ()))
        state.fanout.flush()
        state.fanout.deliver(list(members), ({"type": RESYNC_EVENT},))

    def _on_disconnected(self) -> None:
        self.stats.redis_disconnects += 1
