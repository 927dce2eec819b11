"""Numbered messages and their history in Redis: one Lua script numbers, stores and publishes.

Plain ``group_send`` cannot give every message of a group one position shared by all publishers in
the same order as live delivery and history (two publishers could take 5 and 6 and publish 6 first).
So one script, atomically: creates the group's epoch if its counter is gone, increments the counter
(both in one hash, so they live and die together), appends the text to the group's history (a Redis
stream whose entry IDs are the seqs, trimmed to ``history_length``) and publishes it. History is
read by a script too, so that the counter, epoch and texts are one moment's. Keys expire
``history_ttl`` seconds after the last publish, so Redis memory stays bounded however long it runs.

Every key and the channel of a group carry the group as a hash tag (``prefix:stream:{group}``), so on
a Redis Cluster they live on one shard and the scripts stay single-shard; groups spread over shards.

A failover must never renumber silently. Replication is asynchronous: a promoted replica may lack the
last messages the old master numbered, and would hand out their seqs again for other data. So the
hash also records which server's data it is (the replication ID, ``master_replid``); a promoted
replica keeps the old master's ID as its ``master_replid2``. When the stream's recorded ID is the
server's previous one, the server was promoted since: the scripts start a new epoch (clients get a
``reset``) instead of continuing the old one. A server restarted with its data (AOF) also gets a new
ID, but no previous one: the stream continues.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, NamedTuple, cast

from redis.exceptions import RedisError

# Shared by both scripts. current_epoch: the stream's epoch (false: none), whether this server was
# promoted from a replica since the stream's last write (its epoch is then over), and this server's
# replication ID. start_epoch: a new epoch at seq 0, any history of the old one dropped.
EPOCH_FUNCTIONS = """
local function current_epoch(stream)
  local state = redis.call('HMGET', stream, 'epoch', 'replid')
  local info = redis.call('INFO', 'replication')
  local replid = string.match(info, 'master_replid:(%w+)')
  if state[1] and state[2] ~= replid then
    if state[2] == string.match(info, 'master_replid2:(%w+)') then
      return state[1], true, replid
    end
    redis.call('HSET', stream, 'replid', replid)
  end
  return state[1], false, replid
end
local function start_epoch(stream, history, fresh, replid, ttl)
  redis.call('DEL', stream, history)
  redis.call('HSET', stream, 'epoch', fresh, 'replid', replid)
  redis.call('EXPIRE', stream, ttl)
  return fresh
end
"""

# KEYS: the stream's hash (fields epoch, seq, replid), its history (a Redis stream), the publication
# of an idempotency key (its "epoch:seq"; unused without a key).
# ARGV: publish command (PUBLISH, or SPUBLISH on a Cluster), channel, event type, text before the
# epoch, text between epoch and seq, text after the seq, history length, ttl, group, a fresh epoch,
# 1 if the message has an idempotency key (else 0), how long the key is remembered.
# Returns seq, epoch, 1 if the epoch is new; for a key seen within its window, the first
# publication's seq and epoch and nothing is published.
NUMBERED_SEND_SCRIPT = (
    EPOCH_FUNCTIONS
    + """
if ARGV[11] == '1' then
  local first = redis.call('GET', KEYS[3])
  if first then
    local at = string.find(first, ':', 1, true)
    return {tonumber(string.sub(first, at + 1)), string.sub(first, 1, at - 1), 0}
  end
end
local epoch, promoted, replid = current_epoch(KEYS[1])
local fresh = 0
if not epoch or promoted then
  epoch = start_epoch(KEYS[1], KEYS[2], ARGV[10], replid, ARGV[8])
  fresh = 1
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local text = ARGV[4] .. epoch .. ARGV[5] .. seq .. ARGV[6]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], seq .. '-0', 't', text)
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call(ARGV[1], ARGV[2],
  cmsgpack.pack({type = ARGV[3], text = text, seq = seq, epoch = epoch, group = ARGV[9]}))
if ARGV[11] == '1' then
  redis.call('SET', KEYS[3], epoch .. ':' .. seq, 'EX', ARGV[12])
end
return {seq, epoch, fresh}
"""
)

# KEYS: as above. ARGV: 'after' (entries after seq ARGV[2]) or 'last' (the newest ARGV[2]), a fresh
# epoch, ttl. Returns epoch (nil: no stream), seq, entries. On a promoted server, starts the new epoch.
HISTORY_READ_SCRIPT = (
    EPOCH_FUNCTIONS
    + """
local epoch, promoted, replid = current_epoch(KEYS[1])
if promoted then
  epoch = start_epoch(KEYS[1], KEYS[2], ARGV[3], replid, ARGV[4])
end
local seq = redis.call('HGET', KEYS[1], 'seq') or 0
local entries = {}
if ARGV[1] == 'after' then
  entries = redis.call('XRANGE', KEYS[2], (ARGV[2] + 1) .. '-0', '+')
elseif tonumber(ARGV[2]) > 0 then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
end
return {epoch, seq, entries}
"""
)

# A group is written to the index of numbered groups at most this often per process (and at once
# when its epoch is new): the index only answers "which groups published within history_ttl".
INDEX_REFRESH_SECONDS = 60.0
# How long a publish's idempotency key is remembered: a retry within this window is answered with the
# first publication's position and publishes nothing (docs/publishing.md: Idempotency keys).
IDEMPOTENCY_SECONDS = 300
# An idempotency key: printable ASCII without spaces, at most this long.
MAX_IDEMPOTENCY_KEY = 200
# Concurrent history reads per process: a burst of catch-ups (after an outage) waits its turn
# instead of opening a connection each.
CONCURRENT_READS = 32


class History(NamedTuple):
    """A group's stream as one script saw it: its epoch (None: no stream), last seq, kept texts."""

    epoch: str | None
    seq: int
    entries: list[tuple[int, str]]


class HistoryStore:
    """The numbered streams of one event loop's Redis client, under ``prefix``.

    ``publish_command`` is ``PUBLISH``, or ``SPUBLISH`` where delivery is sharded (a Cluster).
    """

    def __init__(
        self, redis: Any, prefix: str, history_length: int, history_ttl: int, publish_command: str = "PUBLISH"
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.history_length = history_length
        self.history_ttl = history_ttl
        self.publish_command = publish_command
        # Loaded on first use and again after a Redis restart or failover (redis-py handles NOSCRIPT).
        self._send = redis.register_script(NUMBERED_SEND_SCRIPT)
        self._read_script = redis.register_script(HISTORY_READ_SCRIPT)
        self._reads: dict[tuple[str, int | None, int], asyncio.Future[History]] = {}
        self._read_slots = asyncio.Semaphore(CONCURRENT_READS)
        self._indexed: dict[str, float] = {}  # group -> when this process last wrote it to the index

    async def send(
        self,
        group: str,
        channel: str,
        event_type: str,
        text: tuple[str, str, str],
        idempotency_key: str | None = None,
    ) -> tuple[str, int]:
        """Number, store and publish one text on ``channel``; return its position (epoch, seq).

        With an ``idempotency_key`` already used for ``group`` within ``IDEMPOTENCY_SECONDS``, publishes
        nothing and returns the first publication's position: a send whose answer was lost can be
        sent again. The check is part of the numbering script, so it holds across processes.
        """
        before, between, after = text
        seq, epoch, fresh = await self._send(
            keys=[
                self.stream_key(group),
                self.history_key(group),
                self.idempotency_key(group, idempotency_key),
            ],
            args=[
                self.publish_command,
                channel,
                event_type,
                before,
                between,
                after,
                self.history_length,
                self.history_ttl,
                group,
                secrets.token_hex(4),
                0 if idempotency_key is None else 1,
                IDEMPOTENCY_SECONDS,
            ],
        )
        now = time.monotonic()
        if fresh or now - self._indexed.get(group, -INDEX_REFRESH_SECONDS) >= INDEX_REFRESH_SECONDS:
            # The message is out: a failure here must not fail the send (its caller might send it
            # again). Not marking the group as indexed makes the next send try again.
            try:
                await self.redis.zadd(self.index_key(), {group: time.time()})
                self._indexed[group] = now
            except (RedisError, OSError):
                self._indexed.pop(group, None)
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
        mode, count = ("after", after) if after is not None else ("last", last)
        args = [mode, count, secrets.token_hex(4), self.history_ttl]
        async with self._read_slots:
            epoch, seq, entries = await self._read_script(
                keys=[self.stream_key(group), self.history_key(group)], args=args
            )
        if after is None:
            entries.reverse()
        texts = [(int(entry_id.split(b"-")[0]), fields[1].decode()) for entry_id, fields in entries]
        return History(epoch.decode() if epoch else None, int(seq or 0), texts)

    async def groups(self) -> list[tuple[str, int]]:
        """Groups that received a numbered message within ``history_ttl``, with their current seqs."""
        index = self.index_key()
        await self.redis.zremrangebyscore(index, "-inf", time.time() - self.history_ttl)
        names = cast("list[bytes]", await self.redis.zrange(index, 0, -1))  # redis-py's type is a union
        groups = [name.decode() for name in names]
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.hget(self.stream_key(group), "seq")
            counters = await pipe.execute()
        return [(group, int(counter)) for group, counter in zip(groups, counters, strict=True) if counter]

    def stream_key(self, group: str) -> str:
        return group_key(self.prefix, "stream", group)

    def history_key(self, group: str) -> str:
        return group_key(self.prefix, "history", group)

    def idempotency_key(self, group: str, key: str | None) -> str:
        """Where the publication of ``key`` is remembered (in the group's shard: its hash tag)."""
        return f"{group_key(self.prefix, 'published', group)}:{key or ''}"

    def index_key(self) -> str:
        return f"{self.prefix}:numbered"


def valid_idempotency_key(key: str) -> bool:
    """True for a key of 1 to ``MAX_IDEMPOTENCY_KEY`` printable ASCII characters, no spaces."""
    return 0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable() and " " not in key


def group_key(prefix: str, kind: str, group: str) -> str:
    """A Redis name kept for a group, hash-tagged with the group so that all of them share its shard."""
    return f"{prefix}:{kind}:{{{group}}}"
