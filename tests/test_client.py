"""The Python client (echo/client.py): recovery against a scripted server, then against real servers.

The scripted tests stand a plain `websockets` server on port 0 in for ours, so each can send exactly
the frames (duplicates, an unannounced epoch, a refusal) it is about. The system tests run the
production server: the command prints what is published, and the library resumes across a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from echo.client import LiveClient, Refused, parse_args
from echo.publishing import apublish
from scripts import devenv
from tests.helpers.processes import OutputWatcher, Server, spawn, start_server, stop, timeout

Script = Callable[[ServerConnection, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[tuple[str, list[ServerConnection]]]:
    """A server on a free port running ``script(connection, n)`` for its n-th connection (1, 2...)."""
    connections: list[ServerConnection] = []

    async def handler(connection: ServerConnection) -> None:
        connections.append(connection)
        await script(connection, len(connections))

    def select(connection: ServerConnection, offered: list[str]) -> str | None:
        return "echo.v1" if "echo.v1" in offered else None  # as our server: a token's socket, or none

    async with serve(handler, "127.0.0.1", 0, select_subprotocol=select) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/echo/", connections


def data(seq: int, epoch: str = "e1", topic: str = "t", **extra: Any) -> str:
    frame = {"type": "data", "topic": topic, "epoch": epoch, "seq": seq, "ts": 1.0, "values": {"v": seq}}
    return json.dumps({**frame, **extra})


async def collect(client: LiveClient, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The client's frames until ``until(frames)`` holds (with a timeout)."""
    frames: list[dict[str, Any]] = []

    async def run() -> None:
        async for frame in client:
            frames.append(frame)
            if until(frames):
                return

    await asyncio.wait_for(run(), timeout(20))
    return frames


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["seq"] for frame in frames if frame["type"] == "data"]


async def test_duplicates_are_dropped_and_a_reconnect_resumes_with_since() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.send("\n".join(data(seq, replay=True) for seq in (1, 2, 3)))
            await ws.send(data(3) + "\n" + json.dumps({"type": "presence", "topic": "t", "count": 1}))
            await ws.close(1001, "going away")
        else:
            await ws.send(data(3, replay=True) + "\n" + data(4, replay=True))
            await ws.send(data(5))
            await ws.wait_closed()

    async with scripted_server(script) as (url, connections), LiveClient(url, ["t"], history=50) as client:
        frames = await collect(client, lambda got: 5 in seqs(got))
        assert seqs(frames) == [1, 2, 3, 4, 5]
        assert [f["type"] for f in frames].count("presence") == 1
        assert client.connections == 2
        paths = [ws.request.path for ws in connections]
        assert paths == ["/ws/echo/?topics=t&history=50", "/ws/echo/?topics=t&history=50&since=t:3:e1"]


async def test_data_of_an_unannounced_epoch_is_reported_as_a_reset() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(data(1) + "\n" + data(2))
        await ws.send(data(1, "e2") + "\n" + data(2, "e2"))  # the stream started again: not duplicates
        await ws.send(json.dumps({"type": "reset", "topic": "t", "epoch": "e3", "reason": "history gone"}))
        await ws.send(data(1, "e3"))
        await ws.wait_closed()

    async with scripted_server(script) as (url, _), LiveClient(url, ["t"]) as client:
        frames = await collect(client, lambda got: len(got) == 7)
        kinds = [(f["type"], f.get("epoch"), f.get("seq")) for f in frames]
        assert kinds == [
            ("data", "e1", 1),
            ("data", "e1", 2),
            ("reset", "e2", None),
            ("data", "e2", 1),
            ("data", "e2", 2),
            ("reset", "e3", None),
            ("data", "e3", 1),
        ]
        assert "without a reset" in frames[2]["reason"]
        assert client.positions["t"] == ("e3", 1)


async def test_a_refused_request_is_reported_and_not_retried() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(json.dumps({"type": "error", "code": "forbidden", "detail": "you may not read t"}))
        await ws.close(3003, "forbidden")

    async with scripted_server(script) as (url, connections), LiveClient(url, ["t"]) as client:
        frames: list[dict[str, Any]] = []
        with pytest.raises(Refused) as refused:
            async for frame in client:
                frames.append(frame)
        assert refused.value.code == 3003
        assert "forbidden" in refused.value.detail
        assert [f["code"] for f in frames] == ["forbidden"]
        assert len(connections) == 1


async def test_an_expired_token_is_renewed_and_the_topic_resumed() -> None:
    asked: list[bool] = []

    async def token(fresh: bool) -> str:
        asked.append(fresh)
        return f"tok{len(asked)}"

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(data(n))
        if n == 1:
            await ws.close(3000, "token expired")
        await ws.wait_closed()

    async with scripted_server(script) as (url, connections), LiveClient(url, ["t"], token=token) as client:
        frames = await collect(client, lambda got: 2 in seqs(got))
        assert seqs(frames) == [1, 2]
        assert asked == [False, True]
        offered = [ws.request.headers["Sec-WebSocket-Protocol"] for ws in connections]
        assert offered == ["echo.v1, echo.token.tok1", "echo.v1, echo.token.tok2"]
        assert connections[1].request.path.endswith("since=t:1:e1")


async def test_a_static_token_that_expires_ends_the_iteration() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.close(3000, "token expired")

    async with scripted_server(script) as (url, connections), LiveClient(url, ["t"], token="abc") as client:
        with pytest.raises(Refused) as refused:
            await collect(client, lambda got: False)
        assert refused.value.code == 3000
        assert len(connections) == 1


def test_the_command_line_refuses_a_bad_topic(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["ws://127.0.0.1:1/ws/echo/", "--topics", "ok,Not A Topic"])
    assert exited.value.code == 2
    assert "invalid topic 'Not A Topic'" in capsys.readouterr().err


# ------------------------------------------------------------ against the production server


async def test_the_command_prints_published_frames_and_exits_on_a_refusal(
    production_server: Server, topic: str
) -> None:
    for n in range(3):
        await apublish(topic, {"n": n})
    command = [sys.executable, "-m", "echo.client", production_server.ws_url(), "--topics", topic]
    process = spawn([*command, "--history", "10", "--count", "5"], dict(os.environ))
    output = OutputWatcher(process)
    try:
        # Subscribed once its presence frame comes (after the history): what follows is live.
        await asyncio.to_thread(output.wait_for, r'"type":"presence"', 20)
        for n in range(3, 5):
            await apublish(topic, {"n": n})
        assert await asyncio.to_thread(process.wait, timeout(20)) == 0
    finally:
        stop(process)
    frames = [json.loads(line) for line in output.drain().splitlines() if line.startswith("{")]
    got = [(f["seq"], f["values"]["n"], f.get("replay", False)) for f in frames if f["type"] == "data"]
    assert got == [(1, 0, True), (2, 1, True), (3, 2, True), (4, 3, False), (5, 4, False)]

    refused = spawn([*command[:-1], "user-1"], dict(os.environ))
    assert await asyncio.to_thread(refused.wait, timeout(20)) == 1
    text = OutputWatcher(refused).drain()
    assert '"code":"forbidden"' in text
    assert "echo.client: refused (3003)" in text


async def test_the_client_resumes_across_a_server_restart_with_no_gap_and_no_duplicate(
    server_env: dict[str, str], topic: str
) -> None:
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(start_server(devenv.production_command("127.0.0.1", "0"), server_env))
        frames: list[dict[str, Any]] = []
        changed = asyncio.Condition()

        async def follow(client: LiveClient) -> None:
            async for frame in client:
                async with changed:
                    frames.append(frame)
                    changed.notify_all()

        async def wait_for(predicate: Callable[[], bool]) -> None:
            async with changed:
                await asyncio.wait_for(changed.wait_for(predicate), timeout(40))

        async with LiveClient(first.ws_url(), [topic], history=0) as client:
            task = asyncio.create_task(follow(client))
            await wait_for(lambda: any(f["type"] == "presence" for f in frames))
            for n in range(5):
                await apublish(topic, {"n": n})
            await wait_for(lambda: len(seqs(frames)) == 5)

            stop(first.process)
            for n in range(5, 12):  # published while the client has no server: it must get these from history
                await apublish(topic, {"n": n})
            command = devenv.production_command("127.0.0.1", str(first.port))
            await asyncio.to_thread(stack.enter_context, start_server(command, server_env))
            await wait_for(lambda: len(seqs(frames)) == 12)
            for n in range(12, 22):
                await apublish(topic, {"n": n})
            await wait_for(lambda: len(seqs(frames)) >= 22)

            assert seqs(frames) == list(range(1, 23))
            assert [f["values"]["n"] for f in frames if f["type"] == "data"] == list(range(22))
            assert not [f for f in frames if f["type"] == "reset"]
            assert client.connections >= 2
            await client.close()
            await asyncio.wait_for(task, timeout(10))
