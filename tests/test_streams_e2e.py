"""Streams against real server processes: the history/live boundary under load, recovery, presence."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
import websockets

from tests.helpers.clients import data_frames
from tests.helpers.processes import OutputWatcher, Server, seeded_random, spawn, start_server, stop, timeout

PUSH = [sys.executable, "manage.py", "push_data", "--source", "sine"]
RUNSERVER = [sys.executable, "manage.py", "runserver", "127.0.0.1:0", "--noreload"]


async def frames_of(ws, kind: str = "data"):
    """Yield the frames of one type from a socket, however they are batched."""
    while True:
        for frame in data_frames(await ws.recv()):
            if frame["type"] == kind:
                yield frame


@pytest.mark.slow
async def test_every_client_sees_one_contiguous_run_across_the_history_boundary(
    server_env: dict[str, str], server_command: list[str], topic: str
) -> None:
    per_publisher, publishers, clients = 1500, 2, 10
    last = per_publisher * publishers
    env = {**server_env, "CHANNEL_LAYER_CAPACITY": "100000"}  # this test is about order, not backpressure
    with start_server(server_command, env) as server:
        url = server.ws_url(f"/ws/echo/?topics={topic}&history=0")
        async with websockets.connect(url, origin=server.origin, max_size=None) as monitor:
            progress = 0
            progressed = asyncio.Condition()

            async def watch() -> None:
                nonlocal progress
                async for frame in frames_of(monitor):
                    async with progressed:
                        progress = frame["seq"]
                        progressed.notify_all()

            watcher = asyncio.ensure_future(watch())
            pushers = [
                spawn([*PUSH, "--topic", topic, "--rate", "2000", "--count", str(per_publisher)], os.environ)
                for _ in range(publishers)
            ]

            async def one_client(connect_at: int) -> tuple[list[int], int]:
                async with progressed:
                    await asyncio.wait_for(progressed.wait_for(lambda: progress >= connect_at), timeout(30))
                client_url = server.ws_url(f"/ws/echo/?topics={topic}&history=300")
                seqs: list[int] = []
                replayed = 0
                async with websockets.connect(client_url, origin=server.origin, max_size=None) as ws:
                    async for frame in frames_of(ws):
                        seqs.append(frame["seq"])
                        replayed += bool(frame.get("replay"))
                        if frame["seq"] == last:
                            break
                return seqs, replayed

            rng = seeded_random("history boundary")
            moments = sorted(rng.sample(range(1, last - 200), clients))
            runs = await asyncio.wait_for(asyncio.gather(*(one_client(m) for m in moments)), timeout(90))
            watcher.cancel()
            for pusher in pushers:
                assert await asyncio.to_thread(pusher.wait, timeout(30)) == 0
    for moment, (seqs, _) in zip(moments, runs, strict=True):
        assert seqs, f"client connected at {moment} saw nothing"
        assert seqs == list(range(seqs[0], last + 1)), (
            f"gap or duplicate for the client connected at {moment}"
        )
    # The boundary was crossed: clients got history first, then live frames (a client that connects
    # after the last publish gets only history, so not every one of them).
    assert all(replayed > 0 for _, replayed in runs)
    assert sum(replayed < len(seqs) for seqs, replayed in runs) >= clients // 2


async def test_a_client_reconnecting_with_since_gets_exactly_what_it_missed(
    server: Server, topic: str
) -> None:
    async def push(count: int) -> None:
        process = spawn([*PUSH, "--topic", topic, "--rate", "500", "--count", str(count)], os.environ)
        output = OutputWatcher(process)
        assert await asyncio.to_thread(process.wait, timeout(30)) == 0, output.drain()

    url = server.ws_url(f"/ws/echo/?topics={topic}&history=0")
    async with websockets.connect(url, origin=server.origin) as ws:
        await push(3)
        seen = [frame async for frame in _take(frames_of(ws), 3)]
    assert [f["seq"] for f in seen] == [1, 2, 3]
    await push(4)  # published while the client is away
    url = server.ws_url(f"/ws/echo/?topics={topic}&since={topic}:3:{seen[-1]['epoch']}")
    async with websockets.connect(url, origin=server.origin) as ws:
        missed = [frame async for frame in _take(frames_of(ws), 4)]
        assert [f["seq"] for f in missed] == [4, 5, 6, 7]
        assert all(f["replay"] for f in missed)
        await push(1)
        (live,) = [frame async for frame in _take(frames_of(ws), 1)]
        assert live["seq"] == 8 and "replay" not in live


async def _take(frames, count: int):
    async for frame in frames:
        yield frame
        count -= 1
        if count == 0:
            return


async def test_bad_values_are_refused_and_the_server_serves_others(server: Server) -> None:
    async with websockets.connect(server.ws_url("/ws/echo/?topics=NOPE"), origin=server.origin) as ws:
        error = data_frames(await asyncio.wait_for(ws.recv(), timeout(5)))[0]
        assert error == {"type": "error", "code": "bad_topics", "detail": error["detail"]}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout(5))
        assert closed.value.rcvd.code == 1008
    async with websockets.connect(server.ws_url("/ws/echo/?history=0"), origin=server.origin) as ws:
        await ws.send("fine")
        while await asyncio.wait_for(ws.recv(), timeout(5)) != "fine":
            pass


async def test_presence_counts_across_processes_and_recovers_from_kill_9(
    server_env: dict[str, str], topic: str
) -> None:
    env = {**server_env, "WS_PRESENCE_TTL": "2"}
    with start_server(RUNSERVER, env) as first, start_server(RUNSERVER, env) as second:
        url = f"/ws/echo/?topics={topic}&history=0"
        async with (
            websockets.connect(first.ws_url(url), origin=first.origin) as a,
            websockets.connect(second.ws_url(url), origin=second.origin) as b,
        ):
            for ws in (a, b):
                await _presence_reaches(ws, 2)
            second.process.send_signal(signal.SIGKILL)  # dies without cleaning up
            await _presence_reaches(a, 1, seconds=10)
        assert stop(second.process) == -signal.SIGKILL


async def _presence_reaches(ws, count: int, seconds: float = 10) -> None:
    async def wait() -> None:
        async for frame in frames_of(ws, "presence"):
            if frame["count"] == count:
                return

    await asyncio.wait_for(wait(), timeout(seconds))
