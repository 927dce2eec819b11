"""Numbered messages and their history in Redis: one Lua script numbers, stores and publishes.

Plain ``group_send`` cannot give every message of a group one position shared by all publishers in
the same order as live delivery and history (two publishers could take 5 and 6 and publish 6 first).
So one script, atomically: creates the group's epoch if its counter is gone, increments the counter
(both in one hash, so they live and die together), appends the text to the group's history (a Redis
stream whose entry IDs are the seqs, trimmed to ``history_length``) and publishes it. History is
read with the counter and epoch in one transaction. Keys expire ``history_ttl`` seconds after the
last publish, so Redis memory stays bounded however long it runs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import NamedTuple, cast

from redis import asyncio as aioredis

# KEYS: the stream's hash (fields seq and epoch), its history (a Redis stream), the index of groups.
# ARGV: pub/sub channel, event type, text before the epoch, text between epoch and seq, text after the
# seq, history length, ttl, group, now, a fresh epoch.
# When the hash is gone (Redis restarted empty, or a day without publishes) the next message starts a
# new epoch at seq 1, and any history left from the old epoch is dropped with it.
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


class History(NamedTuple):
    """A group's stream as one transaction saw it: its epoch (None: no stream), last seq, kept texts."""

    epoch: str | None
    seq: int
    entries: list[tuple[int, str]]


class HistoryStore:
    """The numbered streams of one event loop's Redis client, under ``prefix``."""

    def __init__(self, redis: aioredis.Redis, prefix: str, history_length: int, history_ttl: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.history_length = history_length
        self.history_ttl = history_ttl
        # Loaded on first use and again after a Redis restart (redis-py handles NOSCRIPT).
        self._send = redis.register_script(NUMBERED_SEND_SCRIPT)
        self._reads: dict[tuple[str, int | None, int], asyncio.Future[History]] = {}

    async def send(
        self, group: str, channel: str, event_type: str, text: tuple[str, str, str]
    ) -> tuple[str, int]:
        """Number, store and publish one text on ``channel``; return its position (epoch, seq)."""
        before, between, after = text
        seq, epoch = await self._send(
            keys=[self._stream_key(group), self._history_key(group), self._index_key()],
            args=[
                channel,
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
        return epoch.decode() if isinstance(epoch, bytes) else epoch, int(seq)

    async def read(self, group: str, *, after: int | None = None, last: int = 0) -> History:
        """The group's position and kept texts, oldest first: ``after`` a seq, or else the newest ``last``.

        Concurrent identical reads share one Redis round trip (after a Redis outage every consumer of
        a topic asks the same question at once).
        """
        key = (group, after, last)
        pending = self._reads.get(key)
        if pending is None:
            pending = self._reads[key] = asyncio.ensure_future(self._read(group, after, last))
            pending.add_done_callback(lambda _: self._reads.pop(key, None))
        return await asyncio.shield(pending)

    async def _read(self, group: str, after: int | None, last: int) -> History:
        key = self._history_key(group)
        async with self.redis.pipeline(transaction=True) as pipe:
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

    async def groups(self) -> list[tuple[str, int]]:
        """Groups that received a numbered message within ``history_ttl``, with their current seqs."""
        index = self._index_key()
        await self.redis.zremrangebyscore(index, "-inf", time.time() - self.history_ttl)
        names = cast("list[bytes]", await self.redis.zrange(index, 0, -1))  # redis-py's type is a union
        groups = [name.decode() for name in names]
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.hget(self._stream_key(group), "seq")
            counters = await pipe.execute()
        return [(group, int(counter)) for group, counter in zip(groups, counters, strict=True) if counter]

    def _stream_key(self, group: str) -> str:
        return f"{self.prefix}:stream:{group}"

    def _history_key(self, group: str) -> str:
        return f"{self.prefix}:history:{group}"

    def _index_key(self) -> str:
        return f"{self.prefix}:numbered"
