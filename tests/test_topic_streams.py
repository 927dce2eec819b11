"""The stream contract without a socket or Redis: ``TopicStreams`` against a scripted history."""

from __future__ import annotations

import json

import pytest

from echo.layer.history import History
from echo.protocol import Position
from echo.ws.streams import TopicStreams, Verdict

GROUP = "topic.prices"


class FakeStream:
    """One topic's stream as Redis would hold it: an epoch, a counter, and the texts history keeps."""

    def __init__(self, epoch: str | None = "e1", seq: int = 0, kept_from: int = 1) -> None:
        self.epoch, self.seq, self.kept_from = epoch, seq, kept_from
        self.reads: list[dict] = []

    def text(self, seq: int) -> str:
        return json.dumps(
            {"type": "data", "topic": "prices", "epoch": self.epoch, "seq": seq}, separators=(",", ":")
        )

    async def read(self, group: str, *, after: int | None = None, last: int = 0) -> History:
        self.reads.append({"after": after, "last": last})
        kept = list(range(self.kept_from, self.seq + 1)) if self.epoch else []
        chosen = [n for n in kept if n > after] if after is not None else kept[-last:] if last else []
        return History(self.epoch, self.seq, [(n, self.text(n)) for n in chosen])


def parsed(frames: list[str]) -> list[tuple]:
    out = []
    for frame in map(json.loads, frames):
        if frame["type"] == "reset":
            out.append(("reset", frame["epoch"]))
        else:
            out.append((frame["epoch"], frame["seq"], frame.get("replay", False)))
    return out


async def test_a_new_subscription_gets_the_newest_history_and_then_only_the_next_frame() -> None:
    stream, streams = FakeStream(seq=10), TopicStreams(history=3)
    caught = await streams.catch_up(GROUP, stream.read)
    assert parsed(caught.frames) == [("e1", 8, True), ("e1", 9, True), ("e1", 10, True)]
    assert (caught.replayed, caught.reset) == (3, False)
    assert streams.position(GROUP) == Position("e1", 10)
    assert streams.check(GROUP, "e1", 10) is Verdict.DUPLICATE
    assert streams.check(GROUP, "e1", 11) is Verdict.SEND
    assert streams.check(GROUP, "e1", 12) is Verdict.RECOVER  # 11 would be missing
    assert streams.check(GROUP, "e2", 1) is Verdict.RECOVER  # another epoch: never sent as it is


async def test_advance_moves_the_position_only_when_told() -> None:
    streams = TopicStreams(history=0, since={GROUP: Position("e1", 4)})
    assert streams.check(GROUP, "e1", 5) is Verdict.SEND
    assert streams.position(GROUP) == Position("e1", 4)
    streams.advance(GROUP, "e1", 5)
    assert streams.check(GROUP, "e1", 5) is Verdict.DUPLICATE


async def test_since_in_the_same_epoch_gets_exactly_what_was_missed() -> None:
    stream = FakeStream(seq=10)
    streams = TopicStreams(history=600, since={GROUP: Position("e1", 7)})
    caught = await streams.catch_up(GROUP, stream.read)
    assert parsed(caught.frames) == [("e1", 8, True), ("e1", 9, True), ("e1", 10, True)]
    assert stream.reads == [{"after": 7, "last": 0}]


async def test_a_hole_is_filled_from_history_including_the_frame_that_found_it() -> None:
    stream = FakeStream(seq=6)
    streams = TopicStreams(history=0, since={GROUP: Position("e1", 4)})
    assert streams.check(GROUP, "e1", 6) is Verdict.RECOVER
    caught = await streams.catch_up(GROUP, stream.read)
    assert parsed(caught.frames) == [("e1", 5, True), ("e1", 6, True)]
    assert streams.check(GROUP, "e1", 6) is Verdict.DUPLICATE


async def test_another_epoch_gets_a_reset_then_the_new_epoch_from_its_start() -> None:
    stream = FakeStream(epoch="e2", seq=3)
    streams = TopicStreams(history=1, since={GROUP: Position("e1", 40)})
    caught = await streams.catch_up(GROUP, stream.read)
    assert parsed(caught.frames) == [("reset", "e2"), ("e2", 1, True), ("e2", 2, True), ("e2", 3, True)]
    assert caught.reset and streams.position(GROUP) == Position("e2", 3)


async def test_a_stream_that_is_gone_gets_a_reset_to_no_epoch_and_then_takes_the_next_one_from_1() -> None:
    stream = FakeStream(epoch=None)
    streams = TopicStreams(history=600, since={GROUP: Position("e1", 40)})
    assert parsed((await streams.catch_up(GROUP, stream.read)).frames) == [("reset", None)]
    assert streams.check(GROUP, "e2", 1) is Verdict.SEND
    assert streams.check(GROUP, "e2", 2) is Verdict.RECOVER
    # Caught up with nothing seen: the new stream from its start, with no second reset.
    stream.epoch, stream.seq = "e2", 2
    assert parsed((await streams.catch_up(GROUP, stream.read)).frames) == [("e2", 1, True), ("e2", 2, True)]


@pytest.mark.parametrize(
    ("stream", "since", "reason"),
    [
        (FakeStream(seq=10, kept_from=6), Position("e1", 2), "no longer reaches back to seq 3"),
        (FakeStream(seq=10), Position("e1", 50), "behind the 50 already seen"),
        (FakeStream(seq=10), Position(None, 5), "without an epoch"),
    ],
)
async def test_what_cannot_be_continued_gets_a_reset_with_the_reason(
    stream: FakeStream, since: Position, reason: str
) -> None:
    streams = TopicStreams(history=2, since={GROUP: since})
    caught = await streams.catch_up(GROUP, stream.read)
    reset = json.loads(caught.frames[0])
    assert (reset["type"], reset["epoch"]) == ("reset", "e1") and reason in reset["reason"]
    assert caught.reset and streams.position(GROUP) == Position("e1", 10)


async def test_no_reset_while_history_holds_everything_missed() -> None:
    stream = FakeStream(seq=5000, kept_from=1)
    streams = TopicStreams(history=10, since={GROUP: Position("e1", 1)})
    caught = await streams.catch_up(GROUP, stream.read)
    assert not caught.reset and caught.replayed == 4999


async def test_a_failed_read_leaves_the_position_as_it_was() -> None:
    async def unreachable(group: str, *, after: int | None = None, last: int = 0) -> History:
        raise ConnectionError("Redis is down")

    streams = TopicStreams(history=10, since={GROUP: Position("e1", 7)})
    with pytest.raises(ConnectionError):
        await streams.catch_up(GROUP, unreachable)
    assert streams.position(GROUP) == Position("e1", 7)


def test_a_paced_stream_takes_seqs_that_skip_forward_but_not_another_epoch() -> None:
    streams = TopicStreams(0, {"topic.a": Position("e1", 5)}, skips=True)
    assert streams.check("topic.a", "e1", 9) is Verdict.SEND  # frames left out by max_rate
    assert streams.check("topic.a", "e1", 5) is Verdict.DUPLICATE
    assert streams.check("topic.a", "e2", 1) is Verdict.RECOVER
    assert TopicStreams(0, {"topic.a": Position("e1", 5)}).check("topic.a", "e1", 9) is Verdict.RECOVER
