"""Conflation (``?max_rate=``): the pacing rule alone, then real servers under a fast feed."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import websockets

from echo.errors import ClientError
from echo.layer.conflation import Conflation
from echo.ws.subscription import parse_subscription
from tests.helpers.clients import data_frames, next_echo
from tests.helpers.processes import Server, spawn, stop, timeout


def test_a_topic_sends_at_most_once_per_interval_and_holds_only_its_newest_frame() -> None:
    pace = Conflation(max_rate=5)  # 0.2 s apart
    assert pace.admit("a", "a1", now=10.0)
    assert not pace.admit("a", "a2", now=10.05)
    assert not pace.admit("a", "a3", now=10.1)
    assert pace.admit("b", "b1", now=10.1)  # topics are paced apart
    assert pace.next_release() == pytest.approx(10.2)
    assert pace.release(now=10.15) == []  # not due yet
    assert pace.release(now=10.2) == [("a", "a3")]  # the newest; a2 was replaced, never sent
    assert pace.next_release() is None
    assert not pace.admit("a", "a4", now=10.3)  # the release counted as a send: due at 10.4
    assert pace.admit("a", "a5", now=10.45)  # due: goes at once, and the held a4 is dropped
    assert pace.release(now=11.0) == []


@pytest.mark.parametrize("raw", ["0", "-1", "1001", "abc", "1e3", "5.1234", ""])
def test_max_rate_must_be_a_positive_rate_up_to_1000(raw: str) -> None:
    with pytest.raises(ClientError) as refused:
        parse_subscription(f"max_rate={raw}".encode(), default_history=0, max_history=10)
    assert refused.value.code == "bad_max_rate"


def test_max_rate_is_read_from_the_url() -> None:
    assert parse_subscription(b"max_rate=2.5", default_history=0, max_history=10).max_rate == 2.5
    assert parse_subscription(b"", default_history=0, max_history=10).max_rate is None


async def test_a_conflated_client_gets_the_latest_values_at_its_rate_and_never_a_backlog(
    any_server: Server, topic: str
) -> None:
    server = any_server
    rate, count, feed_rate = 5, 150, 100  # 1.5 s of a 100/s topic
    base = f"/ws/echo/?topics={topic}&history=0"
    async with (
        websockets.connect(server.ws_url(base + f"&max_rate={rate}"), origin=server.origin) as slow,
        websockets.connect(server.ws_url(base), origin=server.origin) as full,
    ):
        feed = ["--source", "sine", "--topic", topic, "--count", str(count), "--rate", str(feed_rate)]
        pusher = spawn([sys.executable, "manage.py", "push_data", *feed], os.environ)
        try:
            everything = await frames_until(full, last_seq=None, count=count)
            last = everything[-1]
            paced = await frames_until(slow, last_seq=last["seq"])
        finally:
            stop(pusher)
        # The unconflated client got every frame; the conflated one about rate per second, the
        # newest last, in order, and no backlog of what it skipped.
        assert [f["seq"] for f in everything] == list(range(everything[0]["seq"], last["seq"] + 1))
        seqs = [f["seq"] for f in paced]
        assert seqs == sorted(set(seqs))
        elapsed = (everything[-1]["ts"] - everything[0]["ts"]) or 1.0
        assert 2 <= len(paced) <= rate * elapsed + 3, (len(paced), elapsed)
        assert paced[-1] == last  # the latest values arrive, even after the feed stopped
        # Still an echo client like any other.
        await slow.send("still here")
        assert await next_echo(slow) == "still here"


async def frames_until(ws: websockets.ClientConnection, last_seq: int | None, count: int = 0) -> list[dict]:
    """Data frames until one with ``last_seq`` (or ``count`` frames) has arrived."""
    frames: list[dict] = []
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout(15))
        frames += [f for f in data_frames(message) if f["type"] == "data"] if message.startswith("{") else []
        if frames and (frames[-1]["seq"] == last_seq or (last_seq is None and len(frames) >= count)):
            return frames
