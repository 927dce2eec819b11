"""Lanes (``echo.ws.lanes``) on the real layer and Redis: the connections in step with a topic are
written to in one loop, and each leaves its lane at the right position whenever anything else could
matter, so that no client misses or doubles a frame.

A connection here is what ``EchoConsumer`` wires up (``Delivery`` and ``Relay``); its socket is a
``Socket``, which stands for the production server's two synchronous writes. The production server
itself is tested with lanes end to end by tests/test_streams_e2e.py and tests/test_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from channels.layers import get_channel_layer

from echo.layer.capabilities import capabilities
from echo.protocol import topic_group
from echo.publishing import apublish
from echo.ws.connections import DirectWriter
from echo.ws.delivery import Delivery
from echo.ws.lanes import lanes_of
from echo.ws.relay import Relay
from echo.ws.sending import Sender
from echo.ws.subscription import parse_subscription
from tests.helpers.processes import timeout


class Socket:
    """A client's socket as the production server offers it: written to at once while ``open``; it
    says when it stops taking frames (``on_lost``), as the server does on a full buffer or a close."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.open = True
        self.on_lost: Any = None
        self.lane_writes = 0
        self.arrived = asyncio.Event()

    def send_text(self, text: str) -> bool:  # DIRECT_SEND_TEXT
        if self.open:
            self._got(text)
        return self.open

    def direct_writer(self, on_lost: Any) -> DirectWriter | None:  # DIRECT_WRITER
        if not self.open:
            return None
        self.on_lost = on_lost
        return DirectWriter(self._lane_write, "plain", str.encode)

    def _lane_write(self, frame: bytes) -> None:
        self.lane_writes += 1
        self._got(frame.decode())

    async def send(self, message: dict[str, Any]) -> None:  # the server's own send, on the queued path
        self._got(message["text"])

    def _got(self, text: str) -> None:
        self.frames.append(text)
        self.arrived.set()

    def stop_taking_frames(self) -> None:
        self.open = False
        lost, self.on_lost = self.on_lost, None
        if lost is not None:
            lost()

    def seqs(self) -> list[int]:
        return [json.loads(line)["seq"] for frame in self.frames for line in frame.split("\n")]

    async def until_seq(self, seq: int) -> None:
        async with asyncio.timeout(timeout(5)):
            while not self.seqs() or self.seqs()[-1] < seq:
                self.arrived.clear()
                await self.arrived.wait()


class Connection:
    """One subscriber of ``topic`` wired as the consumer wires it, on the configured layer."""

    def __init__(self, topic: str) -> None:
        self.topic, self.socket = topic, Socket()
        self.dispatched: list[str] = []  # the events that were not frames to relay

    async def open(self) -> Connection:
        layer = get_channel_layer()
        self.channel = await layer.new_channel()
        self.sender = Sender(self.socket.send, self.socket.send_text, self.socket.direct_writer)
        wants = parse_subscription(
            f"topics={self.topic}&history=0".encode(), default_history=0, max_history=0
        )
        self.relay = Relay(layer, capabilities(layer), wants, self.sender, None)
        self.delivery = Delivery(layer, self.channel, asyncio.Lock(), self.handle, direct=True)
        assert await self.relay.start(self.channel) == []
        await layer.group_add(topic_group(self.topic), self.channel)
        self.delivery.try_now, self.delivery.busy = self.relay.offer, self.relay.leave_lanes
        return self

    async def handle(self, events: list[dict[str, Any]]) -> None:
        async def dispatch(event: dict[str, Any]) -> None:
            self.dispatched.append(event["type"])

        await self.relay.relay(events, dispatch)

    async def close(self) -> None:
        await self.delivery.stop()


@pytest.fixture
def topic() -> str:
    return "lanes-" + uuid.uuid4().hex[:8]


async def publish(topic: str, count: int) -> int:
    for _ in range(count):
        _, seq = await apublish(topic, {"v": 1})
    return seq


async def test_connections_in_step_are_written_to_in_one_loop_and_get_every_frame_once(topic: str) -> None:
    connections = [await Connection(topic).open() for _ in range(3)]
    try:
        await publish(topic, 2)  # the first frames go one connection at a time; then they are in step
        for connection in connections:
            await connection.socket.until_seq(2)
        lane = lanes_of(get_channel_layer()).get(topic_group(topic))
        assert lane is not None and set(lane.members) == {c.channel for c in connections}
        last = await publish(topic, 5)
        for connection in connections:
            await connection.socket.until_seq(last)
            assert connection.socket.seqs() == list(range(1, last + 1))
            assert connection.socket.lane_writes >= 3
    finally:
        for connection in connections:
            await connection.close()
    assert lanes_of(get_channel_layer()).get(topic_group(topic)) is None  # the last one out closes it


async def test_a_socket_that_stops_taking_frames_leaves_with_the_lanes_position(topic: str) -> None:
    stays, stops = await Connection(topic).open(), await Connection(topic).open()
    try:
        await publish(topic, 2)
        await stops.socket.until_seq(2)
        await publish(topic, 1)
        await stops.socket.until_seq(3)
        assert stops.socket.lane_writes >= 1
        stops.socket.stop_taking_frames()
        lane = lanes_of(get_channel_layer()).get(topic_group(topic))
        assert lane is not None and set(lane.members) == {stays.channel}
        assert stops.relay.streams is not None and stops.relay.streams.position(topic_group(topic))[1] == 3
        await publish(topic, 2)  # it does not take them now: they go the queued way (the server's send)
        await stays.socket.until_seq(5)
        stops.socket.open = True  # it reads again: it gets what waited, once, in order
        await publish(topic, 1)
        await stops.socket.until_seq(6)
        assert stops.socket.seqs() == [1, 2, 3, 4, 5, 6] and stays.socket.seqs() == [1, 2, 3, 4, 5, 6]
    finally:
        await stays.close()
        await stops.close()


async def test_a_run_the_lane_cannot_continue_dissolves_it_and_everyone_catches_up(topic: str) -> None:
    connections = [await Connection(topic).open() for _ in range(2)]
    layer = get_channel_layer()
    try:
        await publish(topic, 3)
        for connection in connections:
            await connection.socket.until_seq(3)
        lane = lanes_of(layer).get(topic_group(topic))
        assert lane is not None and len(lane.members) == 2
        # Seq 4 reaches the connections as another kind of event (not a frame to relay): the lane
        # lets everyone go at 3, then 5 comes with a hole before it, which each fills from history.
        parts = ('{"type":"data","epoch":"', '","seq":', "}")
        await layer.group_send_numbered(topic_group(topic), "not.a.frame", parts)
        await publish(topic, 1)
        for connection in connections:
            await connection.socket.until_seq(5)
            assert connection.socket.seqs() == [1, 2, 3, 4, 5]
            assert connection.dispatched == ["not.a.frame"]
    finally:
        for connection in connections:
            await connection.close()


async def test_an_event_queued_for_a_member_or_its_closing_takes_it_out_of_the_lane(topic: str) -> None:
    queued, closing = await Connection(topic).open(), await Connection(topic).open()
    layer = get_channel_layer()
    try:
        await publish(topic, 2)
        await closing.socket.until_seq(2)
        await queued.socket.until_seq(2)
        lane = lanes_of(layer).get(topic_group(topic))
        assert lane is not None and len(lane.members) == 2
        await layer.send(queued.channel, {"type": "relay.frame", "text": '{"seq": 0}'})
        assert set(lane.members) == {closing.channel}
        closing.sender.closing = True
        assert lanes_of(layer).get(topic_group(topic)) is None
    finally:
        await queued.close()
        await closing.close()


def test_a_run_with_a_hole_dissolves_the_lane_each_member_leaving_at_its_position() -> None:
    class Layer:
        lane: Any = None

        def set_lane(self, group: str, lane: Any) -> None:
            self.lane = lane

    class Member:
        left: tuple[str, str, int] | None = None

        def left_lane(self, group: str, epoch: str, seq: int) -> None:
            self.left = (group, epoch, seq)

    def frame(seq: int) -> dict[str, Any]:
        return {"type": "relay.frame", "text": f"f{seq}", "group": "topic.x", "epoch": "e1", "seq": seq}

    layer, first, second, written = Layer(), Member(), Member(), []
    writer = DirectWriter(written.append, "plain", str.encode)
    lanes = lanes_of(layer)
    assert lanes.join("topic.x", "a", first, writer, ("e1", 3))
    assert lanes.join("topic.x", "b", second, writer, ("e1", 3))
    assert not lanes.join("topic.x", "c", Member(), writer, ("e1", 2)), "joined elsewhere in the stream"
    assert layer.lane([frame(4), frame(5)]) == {"a", "b"}
    assert written == [b"f4\nf5", b"f4\nf5"]  # framed once, written to each
    assert layer.lane([frame(7)]) is None  # 6 is missing
    assert first.left == second.left == ("topic.x", "e1", 5)
    assert layer.lane is None and lanes.get("topic.x") is None


def test_a_lane_opened_before_its_stream_exists_takes_its_first_frame() -> None:
    """Connections of a topic nobody published to yet (position (None, 0)) share a lane from their
    first presence frame; the stream's first frame (seq 1, a new epoch) continues it."""

    class Layer:
        def set_lane(self, group: str, lane: Any) -> None:
            self.lane = lane

    layer, written = Layer(), []
    lanes = lanes_of(layer)
    assert lanes.join("topic.y", "a", None, DirectWriter(written.append, "plain", str.encode), (None, 0))  # type: ignore[arg-type]
    presence = {"type": "relay.frame", "text": "p", "group": "topic.y"}
    first = {"type": "relay.frame", "text": "f1", "group": "topic.y", "epoch": "e9", "seq": 1}
    assert layer.lane([presence]) == {"a"} and layer.lane([first]) == {"a"}
    assert written == [b"p", b"f1"]
    lane = lanes.get("topic.y")
    assert lane is not None and (lane.epoch, lane.seq) == ("e9", 1)
