"""JSON events: a message that is an event name and any JSON value, from every door to every reader.

The wire format alone (parsing, limits, the frame's text), then ``Publisher`` and ``publish()`` to a
consumer through the real ASGI application and Redis (history, ``since``, ``max_rate``, presence relay
the pre-encoded text as for values), then ``push_data --source stdin``, then the HTTP publish API on
real server processes to a `websockets` client.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from echo.layer.redis_target import parse_redis_url
from echo.protocol import (
    MAX_DATA_DEPTH,
    MAX_DATA_KEYS,
    BadEvent,
    Event,
    FrameError,
    as_replay,
    encode_data_frame_around_position,
    encode_event_data,
    encode_event_frame_around_position,
    parse_message,
)
from echo.publishing.broadcast import Publisher, publish
from tests.helpers.clients import data_frames, next_data, watch
from tests.helpers.processes import ROOT, Server, timeout
from tests.helpers.publishing import create_key, publish_batch, request
from wsproject.asgi import application

ORIGIN = [(b"origin", b"http://localhost:8000")]
NOTE = {"text": "héllo", "n": [1, 2]}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# --- the wire format alone -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"event": "note", "data": {"text": "héllo", "n": [1, 2]}}', Event("note", NOTE)),
        ('{"event": "order.created", "data": null}', Event("order.created", None)),
        ('{"data": "x", "event": "a:b-c_d"}', Event("a:b-c_d", "x")),
        # Values are numbers, so an object whose "event" is not a string is still values.
        ('{"event": 5, "data": 6}', {"event": 5, "data": 6}),
        ('{"price": 1.5}', {"price": 1.5}),
        ("7", {"value": 7}),
    ],
)
def test_a_message_is_an_event_when_its_event_is_a_string_and_values_otherwise(
    line: str, expected: Any
) -> None:
    assert parse_message(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"event": "note"}', "both keys"),
        ('{"event": "note", "data": 1, "extra": 2}', "both keys"),
        ('{"event": "", "data": 1}', "invalid event name"),
        ('{"event": "no spaces", "data": 1}', "invalid event name"),
        ('{"event": "-leading", "data": 1}', "invalid event name"),
        ('{"event": "' + "e" * 65 + '", "data": 1}', "invalid event name"),
    ],
)
def test_a_bad_event_is_refused_with_a_reason(line: str, reason: str) -> None:
    with pytest.raises(BadEvent, match=reason):
        parse_message(line)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (math.nan, "not a finite number"),
        ({"a": [1, math.inf]}, r"data.a\[1\]: inf is not a finite number"),
        (10**400, "not a finite number"),
        ({1: "x"}, "is not a string"),
        ({"when": object()}, "object is not a JSON type"),
        ({"set": {1, 2}}, "set is not a JSON type"),
        (nested(MAX_DATA_DEPTH + 1), f"deeper than {MAX_DATA_DEPTH}"),
        ({str(n): n for n in range(MAX_DATA_KEYS + 1)}, f"more than {MAX_DATA_KEYS} object keys"),
        ([{"k": n} for n in range(MAX_DATA_KEYS + 1)], f"more than {MAX_DATA_KEYS} object keys"),
        ("\ud800", "not valid Unicode"),
        ("é" * 60, "122 bytes encoded, over the limit of 100"),  # bytes of UTF-8 (and quotes), not characters
    ],
)
def test_data_past_a_limit_is_refused_with_a_reason(data: Any, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        encode_event_data(data, max_bytes=100)


def test_data_at_the_limits_is_accepted() -> None:
    assert (
        encode_event_data(nested(MAX_DATA_DEPTH), 1000) == "[" * MAX_DATA_DEPTH + "1" + "]" * MAX_DATA_DEPTH
    )
    many = {str(n): n for n in range(MAX_DATA_KEYS)}
    assert json.loads(encode_event_data(many, 100_000)) == many
    assert encode_event_data("é" * 49, 100) == '"' + "é" * 49 + '"'  # 100 bytes exactly
    assert encode_event_data((1, "two", None, True, -0.5), 100) == '[1,"two",null,true,-0.5]'


def fill(parts: tuple[str, str, str], epoch: str, seq: int) -> str:
    """What the numbering script does: the frame's text with its position filled in."""
    before, between, after = parts
    return before + epoch + between + str(seq) + after


def test_an_event_frame_has_the_fields_of_a_values_frame_with_event_and_data_in_place_of_values() -> None:
    parts = encode_event_frame_around_position("orders", 1.5, "note", encode_event_data(NOTE, 1000))
    text = fill(parts, "3f9a", 42)
    assert text == (
        '{"type":"data","topic":"orders","epoch":"3f9a","seq":42,"ts":1.5,'
        '"event":"note","data":{"text":"héllo","n":[1,2]}}'
    )
    assert json.loads(as_replay(text))["replay"] is True
    # Today's values frames are unchanged.
    values = fill(encode_data_frame_around_position("orders", 1.5, {"price": 2}), "3f9a", 42)
    assert values == '{"type":"data","topic":"orders","epoch":"3f9a","seq":42,"ts":1.5,"values":{"price":2}}'


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
)
JSON = st.recursive(
    SCALARS | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(data=JSON, event=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True))
def test_any_json_value_within_the_limits_reaches_the_wire_as_itself(data: Any, event: str) -> None:
    assume(depth(data) <= MAX_DATA_DEPTH)
    text = fill(encode_event_frame_around_position("t", 2.0, event, encode_event_data(data, 1 << 20)), "e", 7)
    frame = json.loads(text)
    assert frame == {
        "type": "data",
        "topic": "t",
        "epoch": "e",
        "seq": 7,
        "ts": 2.0,
        "event": event,
        "data": data,
    }


# --- Publisher and publish() to a consumer, in process ----------------------------------------------


async def connect(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=ORIGIN)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def frames_of(communicator: WebsocketCommunicator, count: int, kind: str = "data") -> list[dict]:
    """The next ``count`` frames of ``kind``, skipping others; one text frame may carry several."""
    got: list[dict] = []
    while len(got) < count:
        output = await communicator.receive_output(timeout=timeout(5))
        got.extend(f for f in data_frames(output["text"]) if f["type"] == kind)
    assert len(got) == count, got
    return got


async def test_events_and_values_share_a_topic_its_numbering_history_and_since(topic: str) -> None:
    publisher = Publisher()
    live = await connect(f"/ws/echo/?topics={topic}&history=0")
    while (await frames_of(live, 1, "presence"))[0]["count"] != 1:  # presence, as for any topic
        pass
    first = await publisher.publish(topic, NOTE, event="note")
    second = await publisher.publish(topic, {"price": 1.5})
    third = await publisher.publish(topic, ["any", {"json": None}], event="order.created")
    assert [first.seq, second.seq, third.seq] == [1, 2, 3] and first.epoch == third.epoch
    frames = await frames_of(live, 3)
    assert [(f["seq"], f.get("event"), f.get("data"), f.get("values")) for f in frames] == [
        (1, "note", NOTE, None),
        (2, None, None, {"price": 1.5}),
        (3, "order.created", ["any", {"json": None}], None),
    ]
    assert "values" not in frames[0] and "event" not in frames[1]
    await live.disconnect()

    replayed = await connect(f"/ws/echo/?topics={topic}&history=3")
    history = await frames_of(replayed, 3)
    assert history == [{**f, "replay": True} for f in frames]
    await replayed.disconnect()

    resumed = await connect(f"/ws/echo/?topics={topic}&since={topic}:1:{first.epoch}")
    assert [(f["seq"], f.get("event")) for f in await frames_of(resumed, 2)] == [
        (2, None),
        (3, "order.created"),
    ]
    await publisher.publish(topic, "after", event="note")
    (after,) = await frames_of(resumed, 1)
    assert (after["seq"], after["data"], "replay" in after) == (4, "after", False)
    await resumed.disconnect()


async def test_a_conflated_client_gets_the_newest_event_and_no_backlog(topic: str) -> None:
    publisher = Publisher()
    slow = await connect(f"/ws/echo/?topics={topic}&history=0&max_rate=2")
    full = await connect(f"/ws/echo/?topics={topic}&history=0")
    for n in range(1, 31):
        await publisher.publish(topic, {"n": n}, event="tick")
    everything = await frames_of(full, 30)
    assert [f["data"]["n"] for f in everything] == list(range(1, 31))
    paced: list[dict] = []
    while not paced or paced[-1]["seq"] != 30:
        paced += await frames_of(slow, 1)
    seqs = [f["seq"] for f in paced]
    assert seqs == sorted(set(seqs)) and len(seqs) < 30
    assert paced[-1] == everything[-1]  # the newest event, as the unconflated client got it
    await slow.disconnect()
    await full.disconnect()


async def test_bad_events_raise_frame_error_and_the_size_limit_is_a_setting(topic: str) -> None:
    publisher = Publisher()
    with pytest.raises(FrameError, match="invalid event name"):
        await publisher.publish(topic, 1, event="two words")
    with pytest.raises(FrameError, match="not a finite number"):
        await publisher.publish(topic, {"x": math.nan}, event="note")
    with pytest.raises(FrameError, match="values must be a non-empty mapping"):
        await publisher.publish(topic, "text without an event")
    big = "x" * (64 * 1024)  # the default limit is 64 KB; with its quotes this is 2 bytes over
    with pytest.raises(
        FrameError, match=r"65538 bytes encoded, over the limit of 65536 \(MESSAGE_MAX_BYTES\)"
    ):
        await publisher.publish(topic, big, event="note")
    with override_settings(MESSAGE_MAX_BYTES=128 * 1024):
        assert (await publisher.publish(topic, big, event="note")).seq == 1


async def test_publish_from_sync_code_takes_an_event(topic: str) -> None:
    client = await connect(f"/ws/echo/?topics={topic}&history=0")
    position = await asyncio.to_thread(publish, topic, {"ready": True, "url": "/x"}, event="export.ready")
    (frame,) = await frames_of(client, 1)
    assert (frame["seq"], frame["event"], frame["data"]) == (
        position.seq,
        "export.ready",
        {"ready": True, "url": "/x"},
    )
    await client.disconnect()


async def test_an_event_goes_out_without_a_position_on_a_layer_that_numbers_nothing(topic: str) -> None:
    hosts = parse_redis_url(os.environ["REDIS_URL"]).channels_redis_hosts()
    layer = {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": hosts}}
    with override_settings(
        CHANNEL_LAYERS={"default": {**layer, "CONFIG": {"hosts": hosts, "prefix": topic}}}
    ):
        client = await connect(f"/ws/echo/?topics={topic}&history=0")
        position = await Publisher().publish(topic, NOTE, event="note")
        output = await client.receive_output(timeout=timeout(5))
        assert position == (None, 0)
        frame = json.loads(output["text"])
        assert isinstance(frame.pop("ts"), float)
        assert frame == {"type": "data", "topic": topic, "event": "note", "data": NOTE}
        await client.disconnect()


# --- push_data --source stdin ------------------------------------------------------------------------


async def test_push_data_takes_event_lines_beside_values_lines(topic: str) -> None:
    client = await connect(f"/ws/echo/?topics={topic}&history=0")
    lines = [
        json.dumps({"event": "note", "data": NOTE}, ensure_ascii=False),
        '{"price": 2}',
        '{"event": "bad name", "data": 1}',
        '{"event": "deep", "data": ' + json.dumps(nested(MAX_DATA_DEPTH + 1)) + "}",
        '{"event": "status", "data": "ok"}',
    ]
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "manage.py", "push_data", "--source", "stdin", "--topic", topic],
        cwd=ROOT,
        env=os.environ,
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert result.returncode == 0, result.stderr
    frames = await frames_of(client, 3)
    assert [(f["seq"], f.get("event"), f.get("data"), f.get("values")) for f in frames] == [
        (1, "note", NOTE, None),
        (2, None, None, {"price": 2}),
        (3, "status", "ok", None),
    ]
    assert "stdin line 3 skipped: invalid event name 'bad name'" in result.stderr
    assert f"nested deeper than {MAX_DATA_DEPTH} levels" in result.stderr
    assert f"Stopped after 3 messages (last seq 3, epoch {frames[0]['epoch']}), 1 skipped" in result.stderr
    assert "Traceback" not in result.stderr
    await client.disconnect()


# --- the HTTP publish API, on real servers, to a websockets client ---------------------------------


async def test_curl_publishes_a_note_and_a_websocket_client_receives_it_at_its_seq(
    any_server: Server, topic: str
) -> None:
    key = await asyncio.to_thread(create_key)
    body = '{"event": "note", "data": {"text": "héllo", "n": [1, 2]}}'.encode()
    async with await watch(any_server, topic) as ws:
        answer = await asyncio.to_thread(request, any_server, f"/api/publish/{topic}", body, key=key)
        assert answer.status == 200, answer.raw
        position = answer.json
        (frame,) = await next_data(ws, 1)
        assert frame == {
            "type": "data",
            "topic": topic,
            "epoch": position["epoch"],
            "seq": position["seq"],
            "ts": frame["ts"],
            "event": "note",
            "data": {"text": "héllo", "n": [1, 2]},
        }
        # Today's body, an object of numbers, is the next message of the same stream.
        answer = await asyncio.to_thread(request, any_server, f"/api/publish/{topic}", {"price": 3}, key=key)
        (frame,) = await next_data(ws, 1)
        assert (frame["seq"], frame["values"], answer.json["seq"]) == (position["seq"] + 1, {"price": 3}, 2)

        # A batch mixes both kinds, in order.
        messages = [
            {"topic": topic, "event": "status", "data": {"state": "shipped"}},
            {"topic": topic, "values": {"price": 4}},
        ]
        answer = await asyncio.to_thread(publish_batch, any_server, messages, key)
        assert [p["seq"] for p in answer.json["published"]] == [3, 4]
        frames = await next_data(ws, 2)
        assert [(f.get("event"), f.get("data"), f.get("values")) for f in frames] == [
            ("status", {"state": "shipped"}, None),
            (None, None, {"price": 4}),
        ]


async def test_an_event_past_a_limit_is_a_400_that_names_it_and_publishes_nothing(
    any_server: Server, topic: str
) -> None:
    key = await asyncio.to_thread(create_key)
    path = f"/api/publish/{topic}"
    refused = {
        '{"event": "note"}': "bad_event",
        '{"event": "note", "data": 1, "more": 2}': "bad_event",
        '{"event": "a b", "data": 1}': "bad_event",
        '{"event": "note", "data": NaN}': "bad_data",
        '{"event": "note", "data": [1e999]}': "bad_data",
        '{"event": "note", "data": ' + json.dumps(nested(MAX_DATA_DEPTH + 1)) + "}": "bad_data",
        '{"event": "note", "data": "' + "x" * (64 * 1024) + '"}': "bad_data",
        '{"event": "note", "data": ' + "[" * 100_000 + "]" * 100_000 + "}": "bad_json",
    }
    for body, code in refused.items():
        answer = await asyncio.to_thread(request, any_server, path, body, key=key)
        assert answer.error() == (400, code), (body[:60], answer.raw)
    # A batch with one bad event is refused whole, saying which.
    messages = [
        {"topic": topic, "event": "ok", "data": 1},
        {"topic": topic, "event": "ok", "data": {"k": [math.inf]}},
    ]
    answer = await asyncio.to_thread(
        request, any_server, "/api/publish", json.dumps({"messages": messages}, allow_nan=True), key=key
    )
    assert answer.error() == (400, "bad_data") and answer.json["detail"].startswith("messages[1]: ")
    answer = await asyncio.to_thread(
        publish_batch, any_server, [{"topic": topic, "event": "x", "values": {}}], key
    )
    assert answer.error() == (400, "bad_batch")
    # Nothing of the refused requests was published: the next message is the topic's first.
    answer = await asyncio.to_thread(request, any_server, path, {"event": "ok", "data": None}, key=key)
    assert answer.json["seq"] == 1
