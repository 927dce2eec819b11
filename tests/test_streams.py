"""Topics, history on connect, recovery with `since`, and errors, through the real application and Redis."""

from __future__ import annotations

import json
import urllib.request

import pytest
from channels.testing import WebsocketCommunicator

from echo.protocol import Position, topic_group
from echo.publishing.broadcast import Publisher
from tests.helpers.clients import data_frames
from wsproject.asgi import application

ORIGIN = [(b"origin", b"http://localhost:8000")]


async def connect(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=ORIGIN)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def frames_until(communicator: WebsocketCommunicator, count: int) -> list[dict]:
    """The next ``count`` data/reset frames, skipping presence; text frames may carry several."""
    got: list[dict] = []
    while len(got) < count:
        output = await communicator.receive_output(timeout=3)
        got.extend(f for f in data_frames(output["text"]) if f["type"] != "presence")
    assert len(got) == count, got
    return got


async def publish(topic: str, count: int) -> list[Position]:
    publisher = Publisher()
    return [await publisher.publish(topic, {"n": n}) for n in range(count)]


async def epoch_of(topic: str) -> str:
    """The topic's current epoch (publishing one frame to learn it)."""
    (position,) = await publish(topic, 1)
    assert position.epoch
    return position.epoch


async def lose_stream(layer, topic: str) -> None:
    """Delete the topic's counter and history from Redis, as a Redis restarted empty would have."""
    group = topic_group(topic)
    await layer.redis().delete(layer.group_key("stream", group), layer.group_key("history", group))


async def test_history_is_replayed_on_connect_in_order_then_live(topic) -> None:
    published = await publish(topic, 5)
    epoch = published[0].epoch
    assert (
        epoch and all(p.epoch == epoch for p in published) and [p.seq for p in published] == [1, 2, 3, 4, 5]
    )
    client = await connect(f"/ws/echo/?topics={topic}&history=3")
    replayed = await frames_until(client, 3)
    assert [(f["epoch"], f["seq"]) for f in replayed] == [(epoch, 3), (epoch, 4), (epoch, 5)]
    assert all(f["replay"] is True for f in replayed)
    await publish(topic, 1)
    (live,) = await frames_until(client, 1)
    assert (live["epoch"], live["seq"]) == (epoch, 6) and "replay" not in live
    await client.disconnect()


async def test_replayed_history_arrives_batched_in_few_frames(topic) -> None:
    await publish(topic, 50)
    client = await connect(f"/ws/echo/?topics={topic}&history=50")
    output = await client.receive_output(timeout=3)
    assert len(data_frames(output["text"])) == 50  # one text frame, newline-separated
    await client.disconnect()


async def test_since_sends_exactly_the_missed_frames_then_live(topic) -> None:
    epoch = (await publish(topic, 10))[0].epoch
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:7:{epoch}")
    assert [f["seq"] for f in await frames_until(client, 3)] == [8, 9, 10]
    await publish(topic, 2)
    assert [f["seq"] for f in await frames_until(client, 2)] == [11, 12]
    await client.disconnect()


async def test_since_up_to_date_sends_nothing_but_live(topic) -> None:
    epoch = (await publish(topic, 4))[0].epoch
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:4:{epoch}")
    await publish(topic, 1)
    assert [f["seq"] for f in await frames_until(client, 1)] == [5]
    await client.disconnect()


async def test_since_ahead_of_the_counter_gets_a_reset_then_history(topic) -> None:
    epoch = (await publish(topic, 3))[0].epoch
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:1000:{epoch}&history=2")
    reset, *history = await frames_until(client, 3)
    assert reset["type"] == "reset" and reset["topic"] == topic and "1000 already seen" in reset["reason"]
    assert reset["epoch"] == epoch
    assert [f["seq"] for f in history] == [2, 3]
    await client.disconnect()


async def test_since_from_another_epoch_gets_a_reset_and_the_whole_new_epoch(topic, layer) -> None:
    old = await epoch_of(topic)
    await lose_stream(layer, topic)
    published = await publish(topic, 3)
    new = published[0].epoch
    assert new != old and [p.seq for p in published] == [1, 2, 3]
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:1:{old}&history=1")
    reset, *frames = await frames_until(client, 4)
    assert (reset["type"], reset["epoch"]) == ("reset", new) and old in reset["reason"]
    assert [(f["epoch"], f["seq"]) for f in frames] == [(new, 1), (new, 2), (new, 3)]
    await client.disconnect()


async def test_since_without_an_epoch_cannot_be_checked_and_gets_a_reset(topic) -> None:
    epoch = (await publish(topic, 3))[0].epoch
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:2")
    reset, *frames = await frames_until(client, 4)
    assert (reset["type"], reset["epoch"]) == ("reset", epoch) and "without an epoch" in reset["reason"]
    assert [f["seq"] for f in frames] == [1, 2, 3]
    await client.disconnect()


async def test_since_of_a_stream_that_is_gone_gets_a_reset_to_no_epoch_then_the_new_stream(
    topic, layer
) -> None:
    old = await epoch_of(topic)
    await lose_stream(layer, topic)
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:1:{old}")
    (reset,) = await frames_until(client, 1)
    assert (reset["type"], reset["epoch"]) == ("reset", None)
    (position,) = await publish(topic, 1)
    (first,) = await frames_until(client, 1)
    assert (first["epoch"], first["seq"]) == (position.epoch, 1) and position.epoch != old
    await client.disconnect()


async def test_a_live_stream_that_starts_again_is_announced_before_its_frames(topic, layer) -> None:
    """Redis losing a topic's data while clients watch: a reset with the new epoch, then all of it."""
    old = await epoch_of(topic)
    client = await connect(f"/ws/echo/?topics={topic}&history=0")
    (before,) = await publish(topic, 1)
    assert [(f["epoch"], f["seq"]) for f in await frames_until(client, 1)] == [(old, before.seq)]
    await lose_stream(layer, topic)
    await publish(topic, 2)
    reset, *frames = await frames_until(client, 3)
    assert reset["type"] == "reset" and reset["epoch"] not in (None, old)
    assert [(f["epoch"], f["seq"]) for f in frames] == [(reset["epoch"], 1), (reset["epoch"], 2)]
    assert all(f.get("replay") for f in frames)  # caught up from history, not relayed with a hole
    await publish(topic, 1)
    (live,) = await frames_until(client, 1)
    assert (live["epoch"], live["seq"]) == (reset["epoch"], 3) and "replay" not in live
    await client.disconnect()


async def test_since_older_than_the_history_gets_a_reset_then_history(topic, layer, monkeypatch) -> None:
    monkeypatch.setattr(layer, "history_length", 5)
    epoch = (await publish(topic, 12))[0].epoch  # the history keeps 8..12
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:2:{epoch}&history=5")
    reset, *history = await frames_until(client, 6)
    assert reset["type"] == "reset" and "no longer reaches back to seq 3" in reset["reason"]
    assert [f["seq"] for f in history] == [8, 9, 10, 11, 12]
    await client.disconnect()


async def test_several_topics_each_replay_and_flow(topic) -> None:
    other = topic + "-b"
    first = (await publish(topic, 2))[0].epoch
    second = (await publish(other, 3))[0].epoch
    client = await connect(f"/ws/echo/?topics={topic},{other}&since={topic}:1:{first},{other}:1:{second}")
    got = await frames_until(client, 3)
    assert [(f["topic"], f["seq"]) for f in got] == [(topic, 2), (other, 2), (other, 3)]
    await client.disconnect()


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("topics=BAD", "bad_topics"),
        ("topics=" + ",".join(f"t{n}" for n in range(17)), "too_many_topics"),
        ("history=lots", "bad_history"),
        ("since=prices:x", "bad_since"),
        ("since=prices:1:BAD!", "bad_since"),
        ("since=prices:1:", "bad_since"),
    ],
)
async def test_bad_query_values_get_an_error_frame_and_close_1008(query: str, code: str) -> None:
    client = await connect(f"/ws/echo/?{query}")
    error = json.loads((await client.receive_output(timeout=2))["text"])
    assert error["type"] == "error" and error["code"] == code and error["detail"]
    assert await client.receive_output(timeout=2) == {"type": "websocket.close", "code": 1008, "reason": code}


async def test_topics_endpoint_lists_topics_with_their_seq(topic, server) -> None:
    await publish(topic, 3)
    with urllib.request.urlopen(server.http_url("/api/topics"), timeout=10) as response:
        assert response.status == 200
        listed = json.loads(response.read())["topics"]
    assert {"name": topic, "seq": 3} in listed
    assert listed == sorted(listed, key=lambda t: t["name"])
