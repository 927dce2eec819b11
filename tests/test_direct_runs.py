"""The hot path without a socket: events that arrive together reach each connection as one run, and
the relay writes a run in one frame only when it simply continues the client's stream.

The server's synchronous write (``Sender.direct``) is a list here; the production server's is tested
end to end by tests/test_streams_e2e.py (bursts of 2,000 messages a second) and tests/test_server.py.
"""

from __future__ import annotations

import asyncio
from types import MappingProxyType

from echo.layer.capabilities import Capabilities
from echo.layer.fanout import COLLECT_EVENTS, FanoutStats, LocalFanout
from echo.protocol import RELAY_EVENT
from echo.ws.relay import Relay, runs
from echo.ws.sending import BATCH_CHARS, Sender
from echo.ws.streams import TopicStreams
from echo.ws.subscription import parse_subscription
from tests.helpers.processes import timeout

GROUP = "topic.prices"


def numbered(seq: int, epoch: str = "e1", text: str | None = None) -> MappingProxyType:
    return MappingProxyType(
        {"type": RELAY_EVENT, "text": text or f"frame {seq}", "group": GROUP, "epoch": epoch, "seq": seq}
    )


async def never_sent(message: dict) -> None:
    raise AssertionError(f"the direct path must not await the server's send: {message}")


def relay_at(seq: int, written: list[str], *, writable: bool = True) -> Relay:
    """A relay whose client has been sent ``seq`` frames of epoch e1, writing into ``written``."""

    def direct(text: str) -> bool:
        if writable:
            written.append(text)
        return writable

    features = Capabilities(numbered=True, shared_state=True, attach=True)
    wants = parse_subscription(b"topics=prices", default_history=0, max_history=0)
    relay = Relay(None, features, wants, Sender(never_sent, direct), None)
    relay.streams = TopicStreams(0, {GROUP: ("e1", seq)})
    return relay


def test_a_run_that_continues_the_stream_goes_out_in_one_frame() -> None:
    written: list[str] = []
    relay = relay_at(3, written)
    assert relay.offer([numbered(4), numbered(5), numbered(6)])
    assert written == ["frame 4\nframe 5\nframe 6"]
    assert relay.streams is not None and relay.streams.position(GROUP) == ("e1", 6)
    assert relay.offer([numbered(7)])
    assert written[-1] == "frame 7"


def test_anything_but_the_next_frames_is_left_to_the_queue_in_order() -> None:
    written: list[str] = []
    relay = relay_at(3, written)
    assert not relay.offer([numbered(5), numbered(6)])  # a hole before it: relay() catches up first
    assert not relay.offer([numbered(4), numbered(6)])  # a hole within the run
    assert not relay.offer([numbered(3), numbered(4)])  # part already sent
    assert not relay.offer([numbered(1, epoch="e2")])  # a new epoch
    assert not relay.offer([numbered(4), numbered(5, epoch="e2")])
    assert not relay.offer([MappingProxyType({"type": "identity.revoked"})])
    assert written == []
    assert relay.streams is not None and relay.streams.position(GROUP) == ("e1", 3)  # unmoved
    # A frame the client already has is handled (dropped) without a write.
    assert relay.offer([numbered(3)])
    assert written == []


def test_a_socket_that_does_not_take_the_frame_leaves_the_position_unmoved() -> None:
    relay = relay_at(3, [], writable=False)
    assert not relay.offer([numbered(4), numbered(5)])
    assert relay.streams is not None and relay.streams.position(GROUP) == ("e1", 3)


def test_a_run_too_big_for_one_frame_is_left_to_the_queue_which_splits_it() -> None:
    written: list[str] = []
    big = "x" * (BATCH_CHARS // 2)
    assert not relay_at(0, written).offer([numbered(1, text=big), numbered(2, text=big)])
    assert written == []


def test_a_run_is_joined_once_for_every_connection_it_is_offered_to() -> None:
    events = [numbered(4), numbered(5)]
    first, second = relay_at(3, []), relay_at(3, [])
    assert first.offer(events) and second.offer(events)
    assert runs.text(events) is runs.text(events)


async def test_events_that_arrive_together_are_offered_as_one_run_per_group() -> None:
    fanout = LocalFanout(FanoutStats())
    offered: dict[str, list] = {"a": [], "b": []}
    done = asyncio.Event()

    def direct(name: str):
        def take(events) -> bool:
            offered[name].append(events)
            if name == "b" and sum(map(len, offered["b"])) == 5:
                done.set()
            return True

        return take

    for name in offered:
        fanout.add_channel(name, capacity=100).direct = direct(name)
        fanout.join(GROUP, name)
    # The reader says more is waiting after each but the last: all three go as one run.
    for seq, more in ((1, True), (2, True), (3, False)):
        fanout.collect(GROUP, numbered(seq), more)
    assert [[e["seq"] for e in run] for run in offered["a"]] == [[1, 2, 3]]
    assert offered["a"][0] is offered["b"][0]  # one object for every member
    # The reader stops with more said to be waiting: what it held goes when the loop turns.
    fanout.collect(GROUP, numbered(4), True)
    fanout.collect(GROUP, numbered(5), True)
    assert len(offered["a"]) == 1
    await asyncio.wait_for(done.wait(), timeout(5))
    assert [[e["seq"] for e in run] for run in offered["b"]] == [[1, 2, 3], [4, 5]]
    assert fanout.stats.delivered == 10


async def test_the_reader_holds_back_a_bounded_number_of_events() -> None:
    fanout = LocalFanout(FanoutStats())
    runs_seen: list[int] = []
    fanout.add_channel("a", capacity=1000).direct = lambda events: bool(runs_seen.append(len(events))) or True
    fanout.join(GROUP, "a")
    for seq in range(1, 2 * COLLECT_EVENTS + 1):
        fanout.collect(GROUP, numbered(seq), True)
    assert runs_seen == [COLLECT_EVENTS, COLLECT_EVENTS]
