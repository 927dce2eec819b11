"""Topics, history on connect, recovery with `since`, and errors, through the real application and Redis."""

from __future__ import annotations

import json
import urllib.request

import pytest
from channels.testing import WebsocketCommunicator

from echo.broadcast import Publisher
from tests.support import data_frames
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


async def publish(topic: str, count: int) -> list[int]:
    publisher = Publisher()
    return [await publisher.publish(topic, {"n": n}) for n in range(count)]


async def test_history_is_replayed_on_connect_in_order_then_live(topic) -> None:
    await publish(topic, 5)
    client = await connect(f"/ws/echo/?topics={topic}&history=3")
    replayed = await frames_until(client, 3)
    assert [f["seq"] for f in replayed] == [3, 4, 5]
    assert all(f["replay"] is True for f in replayed)
    await publish(topic, 1)
    (live,) = await frames_until(client, 1)
    assert live["seq"] == 6 and "replay" not in live
    await client.disconnect()


async def test_replayed_history_arrives_batched_in_few_frames(topic) -> None:
    await publish(topic, 50)
    client = await connect(f"/ws/echo/?topics={topic}&history=50")
    output = await client.receive_output(timeout=3)
    assert len(data_frames(output["text"])) == 50  # one text frame, newline-separated
    await client.disconnect()


async def test_since_sends_exactly_the_missed_frames_then_live(topic) -> None:
    await publish(topic, 10)
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:7")
    assert [f["seq"] for f in await frames_until(client, 3)] == [8, 9, 10]
    await publish(topic, 2)
    assert [f["seq"] for f in await frames_until(client, 2)] == [11, 12]
    await client.disconnect()


async def test_since_up_to_date_sends_nothing_but_live(topic) -> None:
    await publish(topic, 4)
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:4")
    await publish(topic, 1)
    assert [f["seq"] for f in await frames_until(client, 1)] == [5]
    await client.disconnect()


async def test_since_ahead_of_the_counter_gets_a_reset_then_history(topic) -> None:
    await publish(topic, 3)
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:1000&history=2")
    reset, *history = await frames_until(client, 3)
    assert reset["type"] == "reset" and reset["topic"] == topic and "behind 1000" in reset["reason"]
    assert [f["seq"] for f in history] == [2, 3]
    await client.disconnect()


async def test_since_older_than_the_history_gets_a_reset_then_history(topic, layer, monkeypatch) -> None:
    monkeypatch.setattr(layer, "history_length", 5)
    await publish(topic, 12)  # the history keeps 8..12
    client = await connect(f"/ws/echo/?topics={topic}&since={topic}:2&history=5")
    reset, *history = await frames_until(client, 6)
    assert reset["type"] == "reset" and "no longer reaches back to seq 3" in reset["reason"]
    assert [f["seq"] for f in history] == [8, 9, 10, 11, 12]
    await client.disconnect()


async def test_several_topics_each_replay_and_flow(topic) -> None:
    other = topic + "-b"
    await publish(topic, 2)
    await publish(other, 3)
    client = await connect(f"/ws/echo/?topics={topic},{other}&since={topic}:1,{other}:1")
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
