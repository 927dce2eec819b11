"""Presence: how many connections watch each topic, across every server process, kept in Redis.

Each process keeps its own count per topic in a Redis hash (``<prefix>:presence:{<group>}``, one field
per process) with an expiry time in the value, refreshed every ``ttl / 3`` seconds. On topics that need
login the value also lists the process's viewers' names (at most ``MAX_PRESENCE_USERS``), and the
totals carry their union. Totals ignore and
remove expired fields, so a process that dies without cleaning up stops counting within ``ttl``: no
ghost viewers. Each process reads the totals of the topics its clients watch every ``interval`` and
tells those clients when a total changed: at most ``1 / interval`` frames per topic per second, and,
on a topic watched by thousands of its clients, under ``2 * FRAMES_PER_TICK`` frames a tick in all
(each client hears less often): while thousands connect, counts change every tick, and telling every
watcher each time cost more than the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import weakref
from collections import Counter

from redis.exceptions import RedisError

from echo.layer.channel_layer import RedisFanoutChannelLayer
from echo.layer.redis_link import raise_if_cancelling
from echo.protocol import MAX_PRESENCE_USERS, presence_frame, relay_event, topic_group

logger = logging.getLogger(__name__)

# Presence frames one process sends per topic per interval, at most (see the module's docstring).
FRAMES_PER_TICK = 1000


class Presence:
    """One process's view of presence: its local counts, published to Redis, and the shared totals."""

    def __init__(self, layer: RedisFanoutChannelLayer, ttl: float, interval: float = 0.5) -> None:
        self.layer = layer
        self.ttl = ttl
        self.interval = interval
        self.token = uuid.uuid4().hex[:16]
        self.local: Counter[str] = Counter()
        self.names: dict[str, Counter[str]] = {}  # topic -> viewers' names, on topics that list them
        self._dirty: set[str] = set()
        self._last_total: dict[str, tuple[int, list[str] | None, int]] = {}
        self._next_frame: dict[str, float] = {}  # topic -> when its watchers may be told again
        self._last_refresh = 0.0
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def join(self, topics: tuple[str, ...], name: str | None = None) -> None:
        """Called when a connection starts watching ``topics``; ``name`` lists it by name there."""
        self.local.update(topics)
        if name is not None:
            for topic in topics:
                self.names.setdefault(topic, Counter())[name] += 1
        self._changed(topics)

    def leave(self, topics: tuple[str, ...], name: str | None = None) -> None:
        """Called when a connection that watched ``topics`` closes (with the ``name`` it joined with)."""
        self.local.subtract(topics)
        if name is not None:
            for topic in topics:
                viewers = self.names.get(topic)
                if viewers is not None:
                    viewers[name] -= 1
                    if viewers[name] <= 0:
                        del viewers[name]
                    if not viewers:
                        del self.names[topic]
        self._changed(topics)

    def _value(self, topic: str, count: int, expires: float) -> str:
        viewers = self.names.get(topic)
        if not viewers:
            return f"{count}:{expires}"
        return f"{count}:{expires}:{json.dumps(sorted(viewers)[:MAX_PRESENCE_USERS])}"

    def _changed(self, topics: tuple[str, ...]) -> None:
        self._dirty.update(topics)
        for topic in topics:
            self._last_total.pop(topic, None)  # tell local clients on the next tick, changed or not
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="presence")

    def _key(self, topic: str) -> str:
        return self.layer.group_key("presence", topic_group(topic))

    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
                if self._failing:
                    logger.warning("Presence counts are back in Redis")
                self._failing = False
            except (RedisError, OSError) as exc:
                if not self._failing:
                    logger.warning("Presence counts cannot reach Redis (%s); retrying", exc)
                self._failing = True
            raise_if_cancelling()
            await asyncio.sleep(self.interval)

    async def _tick(self) -> None:
        now = time.time()
        redis = self.layer.redis()
        refresh = now - self._last_refresh >= self.ttl / 3
        writes = set(self.local) if refresh else set(self._dirty)
        watched = [topic for topic, count in self.local.items() if count > 0]
        async with redis.pipeline(transaction=False) as pipe:
            for topic in writes:
                count = self.local[topic]
                if count > 0:
                    pipe.hset(self._key(topic), self.token, self._value(topic, count, now + self.ttl))
                    pipe.expire(self._key(topic), int(self.ttl * 2) + 1)
                else:
                    pipe.hdel(self._key(topic), self.token)
            for topic in watched:
                pipe.hgetall(self._key(topic))
            results = await pipe.execute()
        self._dirty.difference_update(writes)
        if refresh:
            self._last_refresh = now
        for topic in [t for t, count in self.local.items() if count <= 0]:
            del self.local[topic]
            self._next_frame.pop(topic, None)
        for topic, fields in zip(watched, results[-len(watched) :] if watched else [], strict=True):
            total = await self._total(topic, fields, now)
            if self._last_total.get(topic) != total and now >= self._next_frame.get(topic, 0.0):
                self._last_total[topic] = total
                watchers = self.local[topic]
                # One frame every (watchers // FRAMES_PER_TICK) ticks: under 2 * FRAMES_PER_TICK a tick.
                self._next_frame[topic] = now + self.interval * (watchers // FRAMES_PER_TICK - 1)
                group, frame = topic_group(topic), presence_frame(topic, *total)
                # Its group said: a connection written to directly can join the group's lane with it.
                self.layer.group_send_local(group, {**relay_event(frame), "group": group})

    async def _total(
        self, topic: str, fields: dict[bytes, bytes], now: float
    ) -> tuple[int, list[str] | None, int]:
        """The topic's connections across processes, and the names of its viewers if it lists them."""
        total, expired = 0, []
        names: set[str] | None = None
        for process, value in fields.items():
            count, expires, listed = parse_field(value)
            if expires < now:
                expired.append(process)
                continue
            total += count
            if listed is not None:
                names = (names or set()).union(listed)
        if expired:
            await self.layer.redis().hdel(self._key(topic), *expired)
        if names is None:
            return total, None, 0
        users = sorted(names)
        return total, users[:MAX_PRESENCE_USERS], max(0, len(users) - MAX_PRESENCE_USERS)

    async def close(self) -> None:
        """Stop updating and remove this process's counts (on a clean shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            for topic in list(self.local):
                await self.layer.redis().hdel(self._key(topic), self.token)


def parse_field(value: bytes) -> tuple[int, float, list[str] | None]:
    """One process's field of a topic's presence hash: its count, when it expires, its viewers if listed."""
    count, _, rest = value.decode().partition(":")
    expires, _, listed = rest.partition(":")
    return int(count), float(expires), json.loads(listed) if listed else None


def watchers(fields: dict[bytes, bytes], now: float) -> int:
    """The connections a topic's presence hash counts across processes, its expired fields left out."""
    return sum(count for count, expires, _ in map(parse_field, fields.values()) if expires >= now)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Presence] = weakref.WeakKeyDictionary()


def presence_for(layer: RedisFanoutChannelLayer, ttl: float) -> Presence:
    """The running event loop's Presence (one per server process in practice)."""
    loop = asyncio.get_running_loop()
    presence = _by_loop.get(loop)
    if presence is None:
        presence = _by_loop[loop] = Presence(layer, ttl)
    return presence
