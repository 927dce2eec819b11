"""The fan-out channel layer against a real Redis. Two layer instances stand for two server processes."""

from __future__ import annotations

import asyncio
import os
import socket

import msgpack
import pytest
import redis.asyncio
from redis.exceptions import RedisError

from echo.layer.channel_layer import RedisFanoutChannelLayer
from echo.layer.events import OVERFLOW_EVENT
from echo.layer.redis_link import redact_url

REDIS_URL = os.environ["REDIS_URL"]


def make_layer(**config) -> RedisFanoutChannelLayer:
    return RedisFanoutChannelLayer(
        hosts=[config.pop("url", REDIS_URL)], prefix=config.pop("prefix", PREFIX), **config
    )


PREFIX = os.environ["CHANNEL_LAYER_PREFIX"] + "-layer"


@pytest.fixture
async def two_processes():
    first, second = make_layer(), make_layer()
    yield first, second
    await first.flush()
    await second.flush()


def test_redis_replies_are_parsed_by_the_pinned_hiredis() -> None:
    """requirements.txt pins hiredis so that redis-py parses every reply in C. redis-py ignores a
    hiredis it does not accept (older than 3.2) and parses in Python, saying nothing: this says it."""
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE


async def test_group_send_reaches_members_in_every_process_once(two_processes) -> None:
    first, second = two_processes
    a1, a2 = await first.new_channel(), await first.new_channel()
    b1 = await second.new_channel()
    for layer, channel in ((first, a1), (first, a2), (second, b1)):
        await layer.group_add("room", channel)
    await first.group_send("room", {"type": "relay.frame", "text": "hi"})
    got = [
        await asyncio.wait_for(layer.receive(channel), 2)
        for layer, channel in ((first, a1), (first, a2), (second, b1))
    ]
    assert got == [{"type": "relay.frame", "text": "hi"}] * 3
    # One Redis message per process, fanned out locally: the two local members share one event.
    assert first.stats.received == 1 and second.stats.received == 1
    assert got[0] is got[1]


async def test_messages_that_arrive_together_keep_their_order_whatever_the_channel(two_processes) -> None:
    """Group messages waiting behind each other are held back and handed over together; a message
    sent to one channel after them still comes after them."""
    first, _ = two_processes
    channel = await first.new_channel()
    await first.group_add("room", channel)
    token = channel.partition("!")[0].rpartition(".")[2]
    client = redis.asyncio.from_url(REDIS_URL)
    try:
        async with client.pipeline(transaction=False) as pipe:  # one write: read back together
            for n in (1, 2, 3):
                pipe.publish(first.group_channel("room"), msgpack.packb({"type": "t", "n": n}))
            pipe.publish(first.inbox_channel(token), msgpack.packb([channel, {"type": "t", "n": 4}]))
            pipe.publish(first.group_channel("room"), msgpack.packb({"type": "t", "n": 5}))
            await pipe.execute()
    finally:
        await client.aclose()
    got = [(await asyncio.wait_for(first.receive(channel), 2))["n"] for _ in range(5)]
    assert got == [1, 2, 3, 4, 5]


async def test_a_discarded_member_receives_nothing_more(two_processes) -> None:
    first, second = two_processes
    stay, leave = await second.new_channel(), await second.new_channel()
    await second.group_add("room", stay)
    await second.group_add("room", leave)
    await second.group_discard("room", leave)
    await first.group_send("room", {"type": "t", "n": 1})
    assert await asyncio.wait_for(second.receive(stay), 2) == {"type": "t", "n": 1}
    assert second.receive_nowait_all(leave) == []


async def test_send_to_a_specific_channel_in_another_process(two_processes) -> None:
    first, second = two_processes
    target = await second.new_channel()
    await first.new_channel()  # first's reader runs too, like a real process
    await first.send(target, {"type": "direct", "body": "✓"})
    assert await asyncio.wait_for(second.receive(target), 2) == {"type": "direct", "body": "✓"}


async def test_a_consumer_that_falls_behind_is_told_how_much_it_lost() -> None:
    layer = make_layer(capacity=3, channel_capacity={"marker.*": 100})
    slow, marker = await layer.new_channel(), await layer.new_channel("marker.")
    await layer.group_add("fast", slow)
    await layer.group_add("fast", marker)
    for n in range(5):
        await layer.group_send("fast", {"type": "t", "n": n})
    # Both members get each message in the same delivery: once the marker has all five, so has slow.
    for n in range(5):
        assert (await asyncio.wait_for(layer.receive(marker), 2))["n"] == n
    # Falling behind again before taking anything: the drops add up in the one overflow event.
    for n in range(5, 8):
        await layer.group_send("fast", {"type": "t", "n": n})
    for n in range(5, 8):
        assert (await asyncio.wait_for(layer.receive(marker), 2))["n"] == n
    events = layer.receive_nowait_all(slow)
    # (n=3, 4 dropped when n=5 came, then 5 and 6 when n=7 came: capacity 3, the event takes a place.)
    assert events == [{"type": OVERFLOW_EVENT, "dropped": 7}, {"type": "t", "n": 7}]
    assert layer.stats.dropped_overflow == 7
    assert layer.stats.overflowed_channels == 1
    await layer.flush()


async def test_cancelling_receive_forgets_the_channel_and_its_groups() -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    # wait_for cancels the receive when it times out, as Channels does when a consumer stops.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.05)
    assert layer.local_member_count("g") == 0
    await layer.flush()


async def test_a_consumer_can_be_woken_by_a_callback_instead_of_waiting_in_receive() -> None:
    layer = make_layer()
    watched, marker = await layer.new_channel(), await layer.new_channel()
    for channel in (watched, marker):
        await layer.group_add("g", channel)
    calls: list[str] = []
    layer.attach(watched, lambda: calls.append("woken"))

    async def publish(n: int) -> None:
        await layer.group_send("g", {"type": "t", "n": n})
        # Both members get each message in the same delivery: once the marker has it, so has watched.
        assert (await asyncio.wait_for(layer.receive(marker), 2))["n"] == n

    await publish(1)
    await publish(2)
    # Called once, when the queue stopped being empty; the second event joined the same batch.
    assert calls == ["woken"]
    assert [e["n"] for e in layer.receive_nowait_all(watched)] == [1, 2]
    await publish(3)
    assert calls == ["woken", "woken"]  # drained, then a new batch
    await layer.flush()


async def test_forget_channel_leaves_its_groups_and_unsubscribes_when_it_was_the_last() -> None:
    layer = make_layer()
    first, second = await layer.new_channel(), await layer.new_channel()
    for channel in (first, second):
        await layer.group_add("g", channel)
    redis_channel = layer.group_channel("g")
    # One subscription per process, not per member.
    assert await layer.redis().pubsub_numsub(redis_channel) == [(redis_channel.encode(), 1)]
    await layer.forget_channel(first)
    assert layer.local_member_count("g") == 1
    await layer.forget_channel(second)
    assert layer.local_member_count("g") == 0
    # The UNSUBSCRIBE went out on the subscriber's own connection: ask until Redis has applied it.
    async with asyncio.timeout(2):
        while await layer.redis().pubsub_numsub(redis_channel) != [(redis_channel.encode(), 0)]:
            pass
    await layer.forget_channel(second)  # twice is harmless (a consumer's teardown may race)
    await layer.flush()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_without_redis_members_can_join_but_publishing_fails_clearly() -> None:
    layer = make_layer(url=f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1)
    channel = await layer.new_channel()
    # Joining must not hang or fail: echo keeps working while Redis is away.
    await asyncio.wait_for(layer.group_add("g", channel), 5)
    assert layer.local_member_count("g") == 1
    with pytest.raises((RedisError, OSError)):
        await layer.group_send("g", {"type": "t"})
    await layer.flush()


def test_redact_url_hides_passwords() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://***@host:6379/0"
    assert redact_url("rediss://user:s3cret@host/0") == "rediss://user:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
