"""A Redis pub/sub channel layer that fans group messages out to local members without per-member work.

Why not channels-redis as it is (the README has the measurements):

* ``RedisChannelLayer`` (the core layer) stores one copy of every group message per member in Redis
  lists, and each consumer blocks in ``BZPOPMIN`` on its own key: the cost grows with clients x
  messages, messages for a consumer more than ``capacity`` behind are dropped with an INFO log only, and
  members silently leave a group after ``group_expiry``. With redis-py 8 its 5 s blocking pop also
  collides with the default 5 s socket timeout, killing idle consumers.
* ``RedisPubSubChannelLayer`` publishes a group message once and each server process receives it once,
  but it SUBSCRIBEs once per consumer, deserialises once per member, and queues without bound.

This layer keeps the pub/sub shape and removes the per-member work: a process subscribes once per group
with members in it (plus once for its own specific channels), deserialises each message once, and puts
the same event dict into each local member's bounded queue. Handlers must not mutate an event.

Limits, on purpose:

* At-most-once, like every Channels layer: a process that is disconnected from Redis misses what is
  published meanwhile. Group membership is live (no ``group_expiry``): it lasts exactly as long as the
  consumer's connection, however long that is.
* Each channel holds at most ``capacity`` events. When a consumer falls that far behind, its queue is
  emptied, the drop is counted in ``stats`` and logged, and the consumer receives one ``OVERFLOW_EVENT``
  so that it can tell its client (which then knows it missed data) instead of losing data silently.
* One Redis server (no sharding); scale Redis vertically or use a Redis that shards pub/sub itself.

The "numbered" extension (``group_send_numbered``, ``group_history``) adds what plain ``group_send``
cannot: one position per message of a group shared by every publisher (a ``seq`` counting within an
``epoch`` that changes whenever Redis lost the counter), and a bounded history in a Redis stream, both
in the same order as live delivery (one Lua script does all three).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import types
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, cast

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from echo.protocol import OVERFLOW_EVENT, RESYNC_EVENT

logger = logging.getLogger(__name__)

# How long group_add waits for Redis to confirm a new subscription before letting the consumer go on.
SUBSCRIBE_CONFIRM_TIMEOUT = 2.0

# KEYS: the stream's hash (fields seq and epoch), its history (a Redis stream), the index of groups.
# ARGV: pub/sub channel, event type, text before the epoch, text between epoch and seq, text after the
# seq, history length, ttl, group, now, a fresh epoch.
# The counter and the epoch live and die together in one hash: when the hash is gone (Redis restarted
# empty, or a day without publishes) the next message starts a new epoch at seq 1, and any history
# left from the old epoch is dropped with it. The history entry's ID is the seq, so history can be read
# "after N" directly.
NUMBERED_SEND_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[10]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local text = ARGV[3] .. epoch .. ARGV[4] .. seq .. ARGV[5]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], seq .. '-0', 't', text)
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[9], ARGV[8])
redis.call('PUBLISH', ARGV[1],
  cmsgpack.pack({type = ARGV[2], text = text, seq = seq, epoch = epoch, group = ARGV[8]}))
return {seq, epoch}
"""

# Reconnection backoff, in seconds: doubling from the first to the cap.
# The cap is short so that live data flows again within a second or two of Redis coming back.
RECONNECT_BACKOFF_FIRST = 0.2
RECONNECT_BACKOFF_CAP = 1.0


def redact_url(url: str) -> str:
    """Return a Redis URL with any password replaced, for log lines and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{location}" if user else f"{scheme}://***@{location}"


class History(NamedTuple):
    """A group's stream as one transaction saw it: its epoch (None: no stream), last seq, kept texts."""

    epoch: str | None
    seq: int
    entries: list[tuple[int, str]]


class LayerStats:
    """Counters a process exposes about its layer: what was delivered, what was dropped and why."""

    def __init__(self) -> None:
        self.published = 0
        self.received = 0
        self.delivered = 0
        self.dropped_overflow = 0
        self.overflowed_channels = 0
        self.redis_disconnects = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class _Channel:
    """One local channel: a bounded queue of events, and whom to wake when one is queued."""

    __slots__ = ("capacity", "direct", "events", "groups", "on_queued", "waiter")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Set by a consumer that can take an event synchronously (see set_direct_delivery).
        self.direct: Callable[[dict[str, Any]], bool] | None = None
        # Set by a consumer that drains its queue without waiting in receive() (see on_queued).
        self.on_queued: Callable[[], None] | None = None
        # A list, not a deque: an empty deque costs 600 bytes, and a channel's queue is empty nearly
        # all the time. Taking from the front is rare (consumers take all at once) and bounded.
        self.events: list[dict[str, Any]] = []
        self.waiter: asyncio.Future[None] | None = None
        self.groups: set[str] = set()

    def put(self, event: dict[str, Any]) -> None:
        """Queue an event, waking its consumer only if the queue was empty.

        Once per batch, not per event: whoever was woken takes everything waiting before it waits
        again (``receive`` returns at once while events wait).
        """
        self.events.append(event)
        if len(self.events) == 1:
            self.wake()

    def wake(self) -> None:
        if self.on_queued is not None:
            self.on_queued()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _LoopState:
    """Everything the layer holds for one event loop: channels, groups, the Redis link and its reader."""

    def __init__(self, layer: RedisFanoutChannelLayer) -> None:
        self.layer = layer
        self.token = uuid.uuid4().hex[:16]
        self.channels: dict[str, _Channel] = {}
        self.groups: dict[str, set[str]] = {}
        # Redis channels this process wants to be subscribed to: its own inbox and one per group.
        self.wanted: set[str] = {layer.inbox_channel(self.token)}
        # A blocking pool makes a burst of publishers wait for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(layer.url, **layer.connection_kwargs)
        self.redis = aioredis.Redis(connection_pool=pool)
        # Loaded on first use and again after a Redis restart (redis-py handles NOSCRIPT).
        self.numbered_send = self.redis.register_script(NUMBERED_SEND_SCRIPT)
        self.pubsub: aioredis.client.PubSub | None = None
        self.reader: asyncio.Task[None] | None = None
        self.confirmations: dict[str, asyncio.Future[None]] = {}
        self.history_reads: dict[tuple[str, int | None, int], asyncio.Future[History]] = {}
        self.connected = asyncio.Event()
        # True from a failed connection until the next success: group_add then does not wait.
        self.failing = False
        # True while the reader has more messages waiting than the one it delivers.
        self.behind = False


class RedisFanoutChannelLayer(BaseChannelLayer):
    """Channel layer over Redis pub/sub: one PUBLISH per group message, one delivery per process."""

    extensions = ["groups", "flush", "numbered"]

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
        self.prefix = prefix
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
        return f"{self.prefix}:inbox:{token}"

    def group_channel(self, group: str) -> str:
        """The Redis channel a group's messages are published on."""
        return f"{self.prefix}:group:{group}"

    # ---------------------------------------------------------------- per-loop state

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
                this.run_until_complete(self._shutdown(state))
            this.close = original_close  # type: ignore[method-assign]
            original_close()

        loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]

    def _ensure_reader(self, state: _LoopState) -> None:
        if state.reader is None or state.reader.done():
            state.reader = asyncio.get_running_loop().create_task(
                self._read_forever(state), name="redis-fanout-reader"
            )

    # ---------------------------------------------------------------- channel layer API

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Create a local channel; its name routes ``send`` from any process to this one."""
        state = self._state()
        name = f"{prefix}{state.token}!{uuid.uuid4().hex[:12]}"
        state.channels[name] = _Channel(self.get_capacity(name))
        await self._until_connected(state)
        return name

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send to a specific channel: directly if it lives in this process, else through Redis."""
        self.require_valid_channel_name(channel)
        state = self._state()
        local = state.channels.get(channel)
        if local is not None:
            if len(local.events) >= local.capacity:
                raise ChannelFull(channel)
            local.put(message)
            return
        token = channel.partition("!")[0].rpartition(".")[2]
        if "!" not in channel or not token:
            raise ValueError(f"{channel!r} is not a specific channel made by new_channel()")
        payload = msgpack.packb([channel, message], use_bin_type=True)
        await state.redis.publish(self.inbox_channel(token), payload)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Return the next event for a local channel, waiting for one.

        Cancelling the wait (which is how Channels stops a consumer) forgets the channel and its
        group memberships, so a consumer that died uncleanly is not fed forever.
        """
        state = self._state()
        local = state.channels.get(channel)
        if local is None:
            # Channels may call receive() again on a consumer's channel while tearing it down.
            local = state.channels[channel] = _Channel(self.get_capacity(channel))
        try:
            while not local.events:
                local.waiter = asyncio.get_running_loop().create_future()
                await local.waiter
                local.waiter = None
        except asyncio.CancelledError:
            await self._forget_channel(state, channel)
            raise
        return local.events.pop(0)

    def set_direct_delivery(self, channel: str, deliver: Callable[[dict[str, Any]], bool]) -> None:
        """Let a local channel's consumer take events synchronously, in the reader's own loop.

        When the channel's queue is empty, the layer offers each new event to ``deliver`` first; if it
        returns True the event was handled (sent, or dropped as a duplicate) and is not queued. This
        spares a task wake-up per member per message, which is what fan-out to thousands costs.
        ``deliver`` must not block, and must return False whenever the consumer is busy, so that
        events stay in order.
        """
        local = self._state().channels.get(channel)
        if local is not None:
            local.direct = deliver

    def on_queued(self, channel: str, callback: Callable[[], None]) -> None:
        """Have ``callback()`` called when an event is queued for a local channel whose queue was empty.

        For a consumer that takes its events with ``receive_nowait_all`` from a task it starts only
        when there is something to take, rather than keeping a task waiting in ``receive`` for its
        whole life (that task and its frames cost about 1.5 KB per connection). Once called, it must
        take events until ``receive_nowait_all`` returns none: events queued meanwhile do not call it
        again. It must call ``forget_channel`` when it ends. ``callback`` runs in the layer's reader:
        it must not block.
        """
        local = self._state().channels.get(channel)
        if local is not None:
            local.on_queued = callback

    def receive_nowait_all(self, channel: str) -> list[dict[str, Any]]:
        """Take every event already waiting for a local channel, without waiting (for batching)."""
        local = self._state().channels.get(channel)
        if local is None or not local.events:
            return []
        events, local.events = local.events, []
        return events

    async def forget_channel(self, channel: str) -> None:
        """Drop a local channel and its group memberships, when its consumer ends.

        Cancelling a ``receive`` does this too; a consumer that never waits in ``receive`` (see
        ``on_queued``) calls it instead.
        """
        await self._forget_channel(self._state(), channel)

    # ---------------------------------------------------------------- groups extension

    async def group_add(self, group: str, channel: str) -> None:
        """Add a local channel to a group; the process subscribes to the group on its first member.

        Waits (briefly) for Redis to confirm a new subscription, so that a message published after
        this returns is delivered. If Redis is unreachable, returns at once: the reader subscribes
        when Redis comes back.
        """
        self.require_valid_group_name(group)
        state = self._state()
        local = state.channels.get(channel)
        if local is None:
            raise ValueError(f"group_add() takes channels created in this process, not {channel!r}")
        members = state.groups.setdefault(group, set())
        members.add(channel)
        local.groups.add(group)
        redis_channel = self.group_channel(group)
        if len(members) == 1:
            await self._subscribe(state, redis_channel)
        elif (pending := state.confirmations.get(redis_channel)) is not None:
            # Another member's subscription is on its way: this member is only "in" once it is done.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(pending), SUBSCRIBE_CONFIRM_TIMEOUT)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove a channel from a group; the process unsubscribes when the last member leaves."""
        state = self._state()
        members = state.groups.get(group)
        if not members or channel not in members:
            return
        members.discard(channel)
        local = state.channels.get(channel)
        if local is not None:
            local.groups.discard(group)
        if not members:
            del state.groups[group]
            await self._unsubscribe(state, self.group_channel(group))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish a message to every member of a group, in every process: serialised once."""
        self.require_valid_group_name(group)
        payload = msgpack.packb(message, use_bin_type=True)
        await self._state().redis.publish(self.group_channel(group), payload)
        self.stats.published += 1

    async def flush(self) -> None:
        """Forget every channel and group of this loop and close its Redis connections."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if state is not None:
            await self._shutdown(state)

    # ---------------------------------------------------------------- numbered extension
    #
    # Plain group_send cannot give every message of a group one number, shared by all publishers,
    # in the same order as live delivery and history: two publishers could number 5 and 6 and
    # publish 6 first. One Lua script does all three atomically, so history and live traffic agree.

    async def group_send_numbered(
        self, group: str, event_type: str, text: tuple[str, str, str]
    ) -> tuple[str, int]:
        """Number a text message for ``group``, keep it in the group's history, publish it.

        ``text`` is the message around its position: ``(before_epoch, between, after_seq)``. Returns
        the position, ``(epoch, seq)``: ``seq`` rises by one per group across all publishers within
        one epoch; a new epoch starts at 1 when Redis no longer has the group's counter. Members
        receive ``{"type": event_type, "text": ..., "seq": seq, "epoch": epoch, "group": group}``.
        The history keeps the last ``history_length`` texts of the current epoch.
        """
        self.require_valid_group_name(group)
        before, between, after = text
        seq, epoch = await self._state().numbered_send(
            keys=[self._stream_key(group), self._history_key(group), self._numbered_index_key()],
            args=[
                self.group_channel(group),
                event_type,
                before,
                between,
                after,
                self.history_length,
                self.history_ttl,
                group,
                time.time(),
                secrets.token_hex(4),
            ],
        )
        self.stats.published += 1
        return epoch.decode() if isinstance(epoch, bytes) else epoch, int(seq)

    async def group_history(self, group: str, *, after: int | None = None, last: int = 0) -> History:
        """Return the group's stream position and kept texts, oldest first, read in one transaction.

        ``after=N`` gives every kept message numbered above N in the current epoch; otherwise the
        newest ``last``. Concurrent identical reads in one process share one Redis round trip (after
        a Redis outage every consumer of a topic asks the same question at once).
        """
        state = self._state()
        key = (group, after, last)
        pending = state.history_reads.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._read_history(state, group, after, last))
            state.history_reads[key] = pending
            pending.add_done_callback(lambda _: state.history_reads.pop(key, None))
        return await asyncio.shield(pending)

    async def _read_history(self, state: _LoopState, group: str, after: int | None, last: int) -> History:
        key = self._history_key(group)
        async with state.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(self._stream_key(group), ["seq", "epoch"])
            if after is not None:
                pipe.xrange(key, min=f"{after + 1}-0", max="+")
            elif last > 0:
                pipe.xrevrange(key, max="+", min="-", count=last)
            results = await pipe.execute()
        (seq, epoch), entries = results[0], results[1] if len(results) > 1 else []
        if after is None:
            entries.reverse()
        texts = [(int(entry_id.split(b"-")[0]), fields[b"t"].decode()) for entry_id, fields in entries]
        return History(epoch.decode() if epoch else None, int(seq or 0), texts)

    async def numbered_groups(self) -> list[tuple[str, int]]:
        """Groups that received a numbered message within ``history_ttl``, with their current numbers."""
        redis = self._state().redis
        index = self._numbered_index_key()
        await redis.zremrangebyscore(index, "-inf", time.time() - self.history_ttl)
        names = cast("list[bytes]", await redis.zrange(index, 0, -1))  # redis-py's type is a union
        groups = [name.decode() for name in names]
        async with redis.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.hget(self._stream_key(group), "seq")
            counters = await pipe.execute()
        return [(group, int(counter)) for group, counter in zip(groups, counters, strict=True) if counter]

    def group_send_local(self, group: str, message: dict[str, Any]) -> None:
        """Deliver a message to this process's members of ``group`` only, without Redis."""
        state = self._state()
        members = state.groups.get(group)
        if members:
            self._deliver(state, members, message)

    def redis(self) -> aioredis.Redis:
        """This event loop's Redis client, for features that keep shared state next to the layer."""
        return self._state().redis

    def _stream_key(self, group: str) -> str:
        return f"{self.prefix}:stream:{group}"

    def _history_key(self, group: str) -> str:
        return f"{self.prefix}:history:{group}"

    def _numbered_index_key(self) -> str:
        return f"{self.prefix}:numbered"

    # ---------------------------------------------------------------- health

    async def ping(self) -> None:
        """Raise ``RedisError`` or ``OSError`` if Redis cannot be reached from this process now."""
        await self._state().redis.ping()

    def local_member_count(self, group: str) -> int:
        """How many channels of this process (and loop) are members of ``group``."""
        return len(self._state().groups.get(group, ()))

    # ---------------------------------------------------------------- internals

    async def _forget_channel(self, state: _LoopState, channel: str) -> None:
        local = state.channels.pop(channel, None)
        if local is None:
            return
        for group in list(local.groups):
            members = state.groups.get(group)
            if members is not None:
                members.discard(channel)
                if not members:
                    del state.groups[group]
                    await self._unsubscribe(state, self.group_channel(group))

    async def _until_connected(self, state: _LoopState) -> bool:
        """Start the reader if needed and wait briefly until it is subscribed; True if it is.

        Returns at once while Redis is known to be down, so that consumers are never held up by it.
        """
        self._ensure_reader(state)
        if state.connected.is_set():
            return True
        if state.failing:
            return False
        try:
            await asyncio.wait_for(state.connected.wait(), SUBSCRIBE_CONFIRM_TIMEOUT)
        except TimeoutError:
            return False
        return True

    async def _subscribe(self, state: _LoopState, redis_channel: str) -> None:
        state.wanted.add(redis_channel)
        if not await self._until_connected(state):
            return  # the reader subscribes to everything wanted once Redis is back
        pubsub = state.pubsub
        if pubsub is None:
            return
        confirmed = state.confirmations.get(redis_channel)
        if confirmed is None:
            confirmed = state.confirmations[redis_channel] = asyncio.get_running_loop().create_future()
        try:
            await pubsub.subscribe(redis_channel)
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_CONFIRM_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as exc:
            logger.warning(
                "Subscription to %s not confirmed yet (%r); the reader retries", redis_channel, exc
            )

    async def _unsubscribe(self, state: _LoopState, redis_channel: str) -> None:
        state.wanted.discard(redis_channel)
        pubsub = state.pubsub
        if pubsub is None or not state.connected.is_set():
            return
        try:
            await pubsub.unsubscribe(redis_channel)
        except (RedisError, OSError) as exc:
            logger.info("Unsubscribing from %s failed (%s); dropped on reconnect", redis_channel, exc)

    async def _read_forever(self, state: _LoopState) -> None:
        """Keep one subscription connection open, resubscribing after any failure, with backoff."""
        backoff = RECONNECT_BACKOFF_FIRST
        while True:
            pubsub = state.redis.pubsub()
            try:
                await pubsub.subscribe(*state.wanted)
                state.pubsub = pubsub
                while True:
                    raise_if_cancelling()
                    message = await pubsub.get_message(timeout=1.0)
                    while message is not None:
                        # More already waiting means we are behind: queue rather than send directly,
                        # so that each consumer sends what piled up in one frame (see _deliver).
                        following = await pubsub.get_message(timeout=0)
                        state.behind = following is not None
                        self._on_redis_message(state, message)
                        if message["type"] == "subscribe" and not state.connected.is_set():
                            state.connected.set()
                            if state.failing:
                                logger.warning(
                                    "Redis at %s is back; subscriptions restored", redact_url(self.url)
                                )
                                # What was published meanwhile was missed: let consumers catch up.
                                self._deliver(state, list(state.channels), {"type": RESYNC_EVENT})
                            state.failing = False
                            backoff = RECONNECT_BACKOFF_FIRST
                        message = following
                    state.behind = False
            except (RedisError, OSError) as exc:
                if state.connected.is_set():
                    self.stats.redis_disconnects += 1
                state.connected.clear()
                state.failing = True
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
                state.pubsub = None
                state.connected.clear()
                await _close_quietly(pubsub)

    def _on_redis_message(self, state: _LoopState, message: dict[str, Any]) -> None:
        kind = message["type"]
        name = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        if kind == "subscribe":
            confirmed = state.confirmations.pop(name, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "message":
            return
        self.stats.received += 1
        if name.startswith(f"{self.prefix}:inbox:"):
            target, event = msgpack.unpackb(message["data"], raw=False)
            self._deliver(state, [target], event)
            return
        group = name[len(self.group_channel("")) :]
        members = state.groups.get(group)
        if members:
            self._deliver(state, members, msgpack.unpackb(message["data"], raw=False))

    def _deliver(self, state: _LoopState, channels: Iterable[str], event: dict[str, Any]) -> None:
        """Put one (shared, read-only) event into each channel's queue; overflow empties a queue."""
        delivered = 0
        for name in channels:
            local = state.channels.get(name)
            if local is None:
                continue
            if (
                not local.events
                and local.direct is not None
                and not state.behind
                and self._deliver_directly(name, local, event)
            ):
                delivered += 1
                continue
            if len(local.events) >= local.capacity:
                self._overflow(name, local)
            local.put(event)
            delivered += 1
        self.stats.delivered += delivered

    def _deliver_directly(self, name: str, local: _Channel, event: dict[str, Any]) -> bool:
        assert local.direct is not None
        try:
            return local.direct(event)
        except Exception:  # a consumer's bug must not stop delivery to everyone else
            logger.exception("Direct delivery to %s failed; queueing instead", name)
            local.direct = None
            return False

    def _overflow(self, name: str, local: _Channel) -> None:
        dropped = sum(1 for event in local.events if event.get("type") != OVERFLOW_EVENT)
        local.events = [{"type": OVERFLOW_EVENT, "dropped": dropped}]
        self.stats.dropped_overflow += dropped
        self.stats.overflowed_channels += 1
        logger.warning("Channel %s fell %d events behind; dropped them and told its consumer", name, dropped)

    async def _shutdown(self, state: _LoopState) -> None:
        if state.reader is not None:
            state.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.reader
        await _close_quietly(state.redis)


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task was asked to stop.

    redis-py can swallow a cancellation that lands inside a command; a loop that keeps going after
    that would never stop (and hang the event loop's shutdown), so long-running loops check here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _close_quietly(closable: Any) -> None:
    with contextlib.suppress(RedisError, OSError, RuntimeError):
        await closable.aclose()
