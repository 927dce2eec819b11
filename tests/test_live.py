"""echo.ops.live against a real Redis: what each process reports, and the snapshot the live view reads.

Each test has a layer prefix of its own, so other tests' topics, processes and keys never show up; the
publishing is the real one (``group_send_numbered`` through the Lua script, presence through
``echo.ws.presence``). Counts asserted are the ones this test caused (the process-wide counters are
read before and after).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import RedisError

from echo.layer.channel_layer import RedisFanoutChannelLayer
from echo.ops import live, metrics
from echo.protocol import encode_data_frame_around_position, topic_group
from echo.ws.presence import Presence
from tests.helpers.processes import timeout

REDIS_URL = os.environ["REDIS_URL"]


@pytest.fixture
async def layer() -> AsyncIterator[RedisFanoutChannelLayer]:
    prefix = f"{os.environ['CHANNEL_LAYER_PREFIX']}-live-{uuid.uuid4().hex[:8]}"
    made = RedisFanoutChannelLayer(hosts=[REDIS_URL], prefix=prefix, history_length=5)
    yield made
    await made.flush()


def reporter(layer: RedisFanoutChannelLayer) -> live.Reporter:
    return live.Reporter(layer.target.sync_client(5), layer.prefix)


async def publish(layer: RedisFanoutChannelLayer, topic: str, count: int) -> None:
    for _ in range(count):
        text = encode_data_frame_around_position(topic, time.time(), {"v": 1})
        await layer.group_send_numbered(topic_group(topic), "relay.frame", text)


async def test_a_topic_shows_its_seq_epoch_history_and_watchers(layer: RedisFanoutChannelLayer) -> None:
    await publish(layer, "alpha", 7)
    presence = Presence(layer, ttl=30, interval=0.05)
    presence.join(("alpha",))
    presence.join(("alpha",))
    try:
        meter = live.RateMeter()
        deadline = time.monotonic() + timeout(10)
        while True:  # presence writes its count on its next tick
            found = await live.snapshot(layer, meter)
            if (found["topics"] and found["topics"][0]["watchers"] == 2) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        (topic,) = found["topics"]
        epoch = (await layer.group_history(topic_group("alpha"))).epoch
        assert topic["topic"] == "alpha" and topic["seq"] == 7 and topic["epoch"] == epoch
        assert topic["history"] == 5  # history_length: the older two were trimmed
        assert topic["watchers"] == 2
        assert found["topics_total"] == 1
    finally:
        await presence.close()


async def test_the_rate_is_measured_between_snapshots_of_one_epoch(layer: RedisFanoutChannelLayer) -> None:
    meter = live.RateMeter(window=10)
    assert meter.rate("t", 100.0, "e1", 10) is None  # one sample: no rate yet
    assert meter.rate("t", 102.0, "e1", 30) == pytest.approx(10.0)
    assert meter.rate("t", 104.0, "e2", 3) is None  # a new epoch starts over
    assert meter.rate("t", 106.0, "e2", 13) == pytest.approx(5.0)
    assert meter.rate("t", 120.0, "e2", 13) is None  # the window moved past every sample
    assert meter.rate("t", 121.0, "e2", 13) == pytest.approx(0.0)


async def test_a_process_reports_its_connections_and_counts_and_expires(
    layer: RedisFanoutChannelLayer,
) -> None:
    reason = "test-" + uuid.uuid4().hex[:6]
    metrics.inc("ws_refused_total", reason, 3)
    metrics.inc("ws_dropped_total", reason, 2)
    one = reporter(layer)
    one.report()
    metrics.inc("ws_refused_total", reason)
    one.report()
    found = await live.snapshot(layer, live.RateMeter())
    (process,) = found["processes"]
    assert process["pid"] == os.getpid() and process["connections"] >= 0
    refused = {row["reason"]: row for row in found["refused"]}
    assert refused[reason]["total"] == 4 and refused[reason]["recent"] == 1  # since the first report
    dropped = {row["reason"]: row for row in found["dropped"]}
    assert dropped[reason]["total"] == 2 and dropped[reason]["recent"] == 0

    # A process that stops reporting is gone once its field expired, and the field is removed.
    one.client.hset(
        live.processes_key(layer.prefix),
        "dead",
        json.dumps({"expires": time.time() - 1, "host": "x", "pid": 1}),
    )
    found = await live.snapshot(layer, live.RateMeter())
    assert len(found["processes"]) == 1
    assert not one.client.hexists(live.processes_key(layer.prefix), "dead")


async def test_two_processes_are_listed_and_their_counts_summed(layer: RedisFanoutChannelLayer) -> None:
    reason = "test-" + uuid.uuid4().hex[:6]
    metrics.inc("ws_dropped_total", reason, 5)
    first, second = reporter(layer), reporter(layer)
    first.report()
    second.report()
    found = await live.snapshot(layer, live.RateMeter())
    assert len(found["processes"]) == 2
    dropped = {row["reason"]: row for row in found["dropped"]}
    assert dropped[reason]["total"] == 10  # this process's counts, reported twice: one per reporter


async def test_key_use_is_counted_and_reported_with_the_next_report(layer: RedisFanoutChannelLayer) -> None:
    digest = uuid.uuid4().hex
    before = time.time()
    live.record_publish(digest, 3)
    live.record_publish(digest, 1)
    live.record_publish_refused("rate_limited")
    one = reporter(layer)
    one.report()
    found = await live.snapshot(layer, live.RateMeter())
    use = found["key_use"][digest]
    assert use["publishes"] == 4 and before <= use["last_used"] <= time.time()
    reasons = {row["reason"] for row in found["refused"]}
    assert f"{live.PUBLISH_REFUSED}:rate_limited" in reasons
    one.report()  # nothing new: the count stays
    assert (await live.snapshot(layer, live.RateMeter()))["key_use"][digest]["publishes"] == 4
    await live.forget_keys(layer, [digest])
    assert digest not in (await live.snapshot(layer, live.RateMeter()))["key_use"]


async def test_key_use_survives_a_failed_report(layer: RedisFanoutChannelLayer) -> None:
    digest = uuid.uuid4().hex
    live.record_publish(digest, 2)
    broken = live.Reporter(
        RedisFanoutChannelLayer(hosts=["redis://127.0.0.1:1/0"]).target.sync_client(1), "x"
    )
    with pytest.raises(RedisError):  # redis-py's ConnectionError: nothing listens on port 1
        broken.report()
    reporter(layer).report()
    assert (await live.snapshot(layer, live.RateMeter()))["key_use"][digest]["publishes"] == 2


async def test_a_topic_watched_by_thousands_is_told_its_count_less_often(
    layer: RedisFanoutChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past FRAMES_PER_TICK watchers in a process, presence frames go out less often, so that a crowd
    connecting (a change every tick) costs FRAMES_PER_TICK deliveries a tick, not one per watcher."""
    from types import SimpleNamespace

    from echo.ws import presence as presence_module

    clock = [1000.0]
    monkeypatch.setattr(presence_module, "time", SimpleNamespace(time=lambda: clock[0]))
    channel = await layer.new_channel()
    await layer.group_add(topic_group("crowd"), channel)
    presence = Presence(layer, ttl=30, interval=0.5)
    try:
        for _ in range(3 * presence_module.FRAMES_PER_TICK):
            presence.join(("crowd",))
        told = []
        for _ in range(12):  # twelve ticks, the count changing before each
            presence.join(("crowd",))
            assert presence._task is not None
            presence._task.cancel()  # the ticks are taken here, one per turn of the clock
            await presence._tick()
            told += [json.loads(event["text"])["count"] for event in layer.receive_nowait_all(channel)]
            clock[0] += presence.interval
        # 3,000 watchers: told every second tick, with the count of the moment.
        assert told == [3001 + 2 * n for n in range(6)]
    finally:
        await presence.close()
