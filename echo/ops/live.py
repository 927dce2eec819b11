"""What is flowing now, for the admin's live view (``echo.ops.live_views``): reported by every server process
to Redis, read back in one snapshot.

Each server process runs a ``Reporter`` thread (started with the application: ``echo.ops.probes``) that
every ``REPORT_SECONDS`` writes its own field of the hash ``<prefix>:{live}:processes``: host, pid,
connections open, and its refusals and drops by reason, since it started and over the last
``RECENT_SECONDS``. A field carries its expiry time, and readers skip it (and remove it) once past, so
a process that died leaves the view within ``PROCESS_TTL`` seconds. With it go the API-key publishes
counted since the last report (``record_publish``: a dict add in the request, no Redis round trip), into
``<prefix>:{live}:keys`` (``<digest>:n`` the count, ``<digest>:t`` the last time). What a process
counted in its last ``REPORT_SECONDS`` before dying is lost.

Topics are not reported: ``snapshot`` reads them where they live, the numbered groups' counters, epochs
and histories (``echo.layer.history``) and their presence hashes (``echo.ws.presence``). A topic's rate is
measured by the process that answers, between its own snapshots (``RateMeter``): the first answer of a
process shows none.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

from echo.layer.capabilities import capabilities
from echo.layer.channel_layer import RedisFanoutChannelLayer
from echo.layer.redis_target import RedisTarget
from echo.ops import metrics
from echo.protocol import GROUP_PREFIX, group_topic
from echo.ws import connections
from echo.ws.presence import watchers

logger = logging.getLogger(__name__)

REPORT_SECONDS = 2.0
PROCESS_TTL = 3 * REPORT_SECONDS
RECENT_SECONDS = 60.0
MAX_TOPICS = 200  # a snapshot lists at most this many topics (by name), and says how many there are
RATE_WINDOW_SECONDS = 10.0

# Counters (echo.ops.metrics) shown as refusals and as drops, by their reason label. Counters another
# version of the server does not have yet count nothing.
REFUSAL_COUNTERS = ("ws_refused_total", "ws_handshakes_refused_total")
DROP_COUNTERS = ("ws_dropped_total",)
PUBLISH_REFUSED = "publish_refused"  # this module's own: publish API refusals, by error code

_lock = threading.Lock()  # guards the two below: written by the event loop, taken by the reporter
_key_publishes: Counter[str] = Counter()  # key digest -> messages published since the last report
_key_last_used: dict[str, float] = {}
_refused_publishes: Counter[str] = Counter()  # error code -> refused publish requests (since start)
_started = False


def processes_key(prefix: str) -> str:
    return f"{prefix}:{{live}}:processes"


def keys_key(prefix: str) -> str:
    return f"{prefix}:{{live}}:keys"


def record_publish(digest: str, messages: int) -> None:
    """Called after an API key published ``messages``; reported with the next report."""
    with _lock:
        _key_publishes[digest] += messages
        _key_last_used[digest] = time.time()


def record_publish_refused(code: str) -> None:
    """Called when the publish API refused a request (``code``: its error code)."""
    with _lock:
        _refused_publishes[code] += 1


def start_reporting(layer: Any) -> None:
    """Called once the application is built: report this process every ``REPORT_SECONDS`` (a thread).

    Only on this project's layer (another has no Redis to report to); once per process.
    """
    global _started
    if _started or not capabilities(layer).shared_state:
        return
    _started = True
    thread = threading.Thread(
        target=_report_forever,
        args=(layer.target, layer.prefix, time.time()),
        name="live-report",
        daemon=True,
    )
    thread.start()


def _report_forever(target: RedisTarget, prefix: str, started: float) -> None:
    # The client is made here, not at startup: a Cluster client connects when made, and the
    # application must start while Redis is away (its /healthz says so).
    while True:
        try:
            client = target.sync_client(REPORT_SECONDS)
            break
        except (RedisError, OSError):
            time.sleep(REPORT_SECONDS)
    Reporter(client, prefix, started).run_forever()


def _by_reason(counts: dict[tuple[str, str], int], names: Iterable[str]) -> Counter[str]:
    found: Counter[str] = Counter()
    for (name, label), value in counts.items():
        if name in names:
            found[label or "unknown"] += value
    return found


class Reporter:
    """One process's reports: its connections and counts, and the API-key use counted meanwhile."""

    def __init__(self, client: Any, prefix: str, started: float | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.token = uuid.uuid4().hex[:16]
        self.started = started or time.time()
        self.host = socket.gethostname()
        # (time, refusals, drops) of each report within RECENT_SECONDS, oldest first.
        self.past: collections.deque[tuple[float, Counter[str], Counter[str]]] = collections.deque()
        self._failing = False

    def run_forever(self) -> None:
        while True:
            try:
                self.report()
                if self._failing:
                    logger.warning("The live view's reports reach Redis again")
                self._failing = False
            except (RedisError, OSError) as exc:
                if not self._failing:
                    logger.warning("The live view's reports cannot reach Redis (%s); retrying", exc)
                self._failing = True
            time.sleep(REPORT_SECONDS)

    def report(self) -> None:
        """Write this process's field, and the key use counted since the last report."""
        now = time.time()
        counts = metrics.totals()
        with _lock:
            publishes, last_used = dict(_key_publishes), dict(_key_last_used)
            _key_publishes.clear()
            _key_last_used.clear()
            refusals = _by_reason(counts, REFUSAL_COUNTERS) + Counter(
                {f"{PUBLISH_REFUSED}:{code}": n for code, n in _refused_publishes.items()}
            )
        drops = _by_reason(counts, DROP_COUNTERS)
        self.past.append((now, refusals, drops))
        while now - self.past[0][0] > RECENT_SECONDS:
            self.past.popleft()
        _, refusals_then, drops_then = self.past[0]
        field = {
            "host": self.host,
            "pid": os.getpid(),
            "started": self.started,
            "expires": now + PROCESS_TTL,
            "connections": connections.count(),
            "refused": refusals,
            "dropped": drops,
            "recent_refused": refusals - refusals_then if len(self.past) > 1 else refusals,
            "recent_dropped": drops - drops_then if len(self.past) > 1 else drops,
        }
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(processes_key(self.prefix), self.token, json.dumps(field))
                pipe.expire(processes_key(self.prefix), int(PROCESS_TTL) + 1)
                for digest, count in publishes.items():
                    pipe.hincrby(keys_key(self.prefix), f"{digest}:n", count)
                    pipe.hset(keys_key(self.prefix), f"{digest}:t", last_used[digest])
                pipe.execute()
        except BaseException:
            with _lock:  # counted again with the next report
                _key_publishes.update(publishes)
                for digest, when in last_used.items():
                    _key_last_used[digest] = max(when, _key_last_used.get(digest, 0.0))
            raise


class RateMeter:
    """Messages per second of each topic, from the seqs this process saw in its recent snapshots."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self.seen: dict[str, collections.deque[tuple[float, str | None, int]]] = {}

    def rate(self, topic: str, now: float, epoch: str | None, seq: int) -> float | None:
        """The rate since the oldest sample of this epoch within the window; None without one."""
        samples = self.seen.setdefault(topic, collections.deque())
        while samples and (now - samples[0][0] > self.window or samples[0][1] != epoch):
            samples.popleft()
        samples.append((now, epoch, seq))
        first_time, _, first_seq = samples[0]
        if now - first_time < 0.5:
            return None
        return max(0, seq - first_seq) / (now - first_time)

    def forget_except(self, topics: set[str]) -> None:
        for topic in set(self.seen) - topics:
            del self.seen[topic]


async def snapshot(layer: RedisFanoutChannelLayer, meter: RateMeter) -> dict[str, Any]:
    """Everything the live view shows, read now; each API key's use is keyed by its digest."""
    redis = layer.redis()
    now = time.time()
    groups = sorted((g, seq) for g, seq in await layer.numbered_groups() if g.startswith(GROUP_PREFIX))
    shown = groups[:MAX_TOPICS]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(processes_key(layer.prefix))
        pipe.hgetall(keys_key(layer.prefix))
        for group, _ in shown:
            pipe.hget(layer.group_key("stream", group), "epoch")
            pipe.xlen(layer.group_key("history", group))
            pipe.hgetall(layer.group_key("presence", group))
        results = await pipe.execute()
    process_fields, key_fields, per_topic = results[0], results[1], results[2:]
    topics = []
    for index, (group, seq) in enumerate(shown):
        epoch_raw, history, presence = per_topic[3 * index : 3 * index + 3]
        epoch = epoch_raw.decode() if epoch_raw else None
        topic = group_topic(group)
        topics.append(
            {
                "topic": topic,
                "seq": seq,
                "epoch": epoch,
                "history": history,
                "watchers": watchers(presence, now),
                "rate": meter.rate(topic, now, epoch, seq),
            }
        )
    meter.forget_except({topic["topic"] for topic in topics})
    processes, expired = [], []
    for token, value in process_fields.items():
        field = json.loads(value)
        if field["expires"] < now:
            expired.append(token)
        else:
            processes.append(field)
    if expired:
        await redis.hdel(processes_key(layer.prefix), *expired)
    processes.sort(key=lambda field: (field["host"], field["pid"]))
    return {
        "time": now,
        "topics": topics,
        "topics_total": len(groups),
        "processes": [
            {name: field[name] for name in ("host", "pid", "started", "connections")} for field in processes
        ],
        "refused": _summed(processes, "refused", "recent_refused"),
        "dropped": _summed(processes, "dropped", "recent_dropped"),
        "key_use": _key_use(key_fields),
    }


def _summed(processes: list[dict[str, Any]], total: str, recent: str) -> list[dict[str, Any]]:
    """Reasons summed over the processes running now: since they started, and in the last minute."""
    totals: Counter[str] = Counter()
    recents: Counter[str] = Counter()
    for field in processes:
        totals.update(field[total])
        recents.update(field[recent])
    return [
        {"reason": reason, "recent": recents[reason], "total": totals[reason]}
        for reason in sorted(totals, key=lambda reason: (-recents[reason], -totals[reason], reason))
    ]


def _key_use(fields: dict[bytes, bytes]) -> dict[str, dict[str, float]]:
    """digest -> {"publishes", "last_used"} from the keys hash."""
    use: dict[str, dict[str, float]] = {}
    for name, value in fields.items():
        digest, _, kind = name.decode().rpartition(":")
        entry = use.setdefault(digest, {"publishes": 0, "last_used": 0.0})
        if kind == "n":
            entry["publishes"] = int(value)
        elif kind == "t":
            entry["last_used"] = float(value)
    return use


async def forget_keys(layer: RedisFanoutChannelLayer, digests: Iterable[str]) -> None:
    """Drop the use of keys that no longer exist (revoked)."""
    names = [f"{digest}:{kind}" for digest in digests for kind in ("n", "t")]
    if names:
        await layer.redis().hdel(keys_key(layer.prefix), *names)
