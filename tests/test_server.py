"""End to end: each real server process (`manage.py runserver`, i.e. daphne, and the production
server, uvicorn), push_data as a subprocess, and WebSocket clients from the `websockets` library, as
any client no one here wrote would connect."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import urllib.parse
import urllib.request

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.helpers.clients import next_echo, receive_frames
from tests.helpers.processes import SERVER_COMMANDS, OutputWatcher, Server, spawn, start_server, stop, timeout


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(url, timeout=timeout(10)) as response:
        headers = {name.lower(): value for name, value in response.headers.items()}
        return response.status, headers, response.read().decode()


async def test_the_page_is_served_with_its_controls_and_static_script(any_server: Server) -> None:
    status, _, html = await asyncio.to_thread(fetch, any_server.http_url("/"))
    assert status == 200
    for element in ('id="connect"', 'id="disconnect"', 'id="status"', 'id="log"'):
        assert element in html
    assert "<script>" not in html  # no inline script: JavaScript lives in a static file
    scripts = re.findall(r'<script[^>]*\ssrc="([^"]+)"', html)
    assert scripts
    for script in scripts:
        status, headers, body = await asyncio.to_thread(fetch, any_server.http_url(script))
        assert status == 200 and "javascript" in headers["content-type"] and body


async def test_every_module_the_page_imports_is_a_hashed_file_the_server_serves(
    production_server: Server,
) -> None:
    """After a deploy a browser must never mix a new module with an old one from its cache."""
    _, _, html = await asyncio.to_thread(fetch, production_server.http_url("/"))
    pending = re.findall(r'<script[^>]*\stype="module"[^>]*\ssrc="([^"]+)"', html)
    assert pending, "the page loads its script as a module"
    seen: set[str] = set()
    while pending:
        url = pending.pop()
        assert re.search(r"\.[0-9a-f]{12}\.js$", url), f"{url} is not a hashed name"
        status, _, body = await asyncio.to_thread(fetch, production_server.http_url(url))
        assert status == 200, url
        seen.add(url)
        for imported in re.findall(r'^import .* from "([^"]+)";$', body, re.MULTILINE):
            pending.append(urllib.parse.urljoin(url, imported))
    assert len(seen) >= 4  # app, connection, chart and uPlot


@pytest.mark.parametrize("path", ["/ws/echo/", "/"])
async def test_text_and_binary_echo_and_pushed_frames_end_to_end(
    any_server: Server, path: str, topic: str
) -> None:
    async with websockets.connect(
        any_server.ws_url(f"{path}?topics={topic}"), origin=any_server.origin
    ) as ws:
        await ws.send("*")
        assert await next_echo(ws) == "*"
        await ws.send(b"\x00\xff binary")
        assert await next_echo(ws) == b"\x00\xff binary"

        command = [sys.executable, "manage.py", "push_data", "--count", "3", "--rate", "50", "--topic", topic]
        pusher = spawn(command, os.environ)
        output = OutputWatcher(pusher)
        frames = await receive_frames(ws, "data", 3, seconds=15)
        assert await asyncio.to_thread(pusher.wait, timeout(15)) == 0, output.drain()
    assert [f["seq"] for f in frames] == [1, 2, 3]
    assert all(f["type"] == "data" and f["topic"] == topic and "price" in f["values"] for f in frames)


async def test_a_foreign_origin_is_refused_by_the_server(any_server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(any_server.ws_url(), origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    # ... and the server keeps serving everyone else.
    async with websockets.connect(any_server.ws_url(), origin=any_server.origin) as ws:
        await ws.send("still here")
        assert await next_echo(ws) == "still here"


@pytest.mark.slow
async def test_an_idle_connection_stays_open(any_server: Server) -> None:
    """Catches redis-py 8's 5 s socket timeout killing idle consumers (seen with the core layer)."""
    async with websockets.connect(any_server.ws_url(), origin=any_server.origin) as ws:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), 15)
        await ws.send("awake")
        assert await next_echo(ws) == "awake"


@pytest.mark.slow
async def test_a_burst_of_a_thousand_connections_all_succeed(any_server: Server) -> None:
    """Catches handshakes failing with HTTP 500 when a Redis pool runs out of connections."""
    in_flight = asyncio.Semaphore(200)
    failures: list[str] = []
    opened: list[websockets.ClientConnection] = []

    async def one(n: int) -> None:
        async with in_flight:
            try:
                ws = await websockets.connect(
                    any_server.ws_url(), origin=any_server.origin, open_timeout=timeout(30)
                )
            except Exception as exc:  # every kind of failure is counted and reported
                failures.append(f"{n}: {exc!r}")
            else:
                opened.append(ws)

    await asyncio.gather(*(one(n) for n in range(1000)))
    try:
        assert failures == []
        assert len(opened) == 1000
        await opened[-1].send("last")
        assert await next_echo(opened[-1]) == "last"
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    assert "Traceback" not in any_server.output.text()


async def test_the_server_stops_cleanly(any_server: Server) -> None:
    # uvicorn re-raises the signal after its graceful shutdown, as a shell expects (exit 130).
    assert await asyncio.to_thread(stop, any_server.process) in {0, -signal.SIGINT}
    assert "Traceback" not in any_server.output.drain()


async def test_the_production_server_runs_several_workers_each_closing_with_1001_on_sigterm(
    server_env: dict[str, str],
) -> None:
    """uvicorn's workers run its own server class: the 1001 close must come from the protocol."""
    env = {**server_env, "WEB_CONCURRENCY": "2"}
    with start_server(SERVER_COMMANDS["production"], env) as server:
        server.output.wait_for_count(r"Started server process \[\d+\]", 2, 30)
        url = server.ws_url("/ws/echo/?history=0")
        clients = [await websockets.connect(url, origin=server.origin) for _ in range(6)]
        try:
            for n, ws in enumerate(clients):
                await ws.send(f"worker {n}")
                assert await next_echo(ws) == f"worker {n}"
            server.process.send_signal(signal.SIGTERM)
            for ws in clients:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), timeout(10))
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
        assert await asyncio.to_thread(server.process.wait, timeout(15)) == 0
        output = server.output.drain()
    assert "Traceback" not in output
    assert re.search(r"Closing \d+ WebSocket connections with 1001", output)


async def test_compression_is_negotiated_with_clients_that_offer_it_and_both_kinds_get_every_frame(
    server_env: dict[str, str], topic: str
) -> None:
    from websockets.extensions.permessage_deflate import PerMessageDeflate

    env = {**server_env, "WS_COMPRESSION": "1"}
    with start_server(SERVER_COMMANDS["production"], env) as server:
        url = server.ws_url(f"/ws/echo/?topics={topic}&history=0")
        async with (
            websockets.connect(url, origin=server.origin) as deflating,  # offers permessage-deflate
            websockets.connect(url, origin=server.origin, compression=None) as plain,
        ):
            (extension,) = deflating.protocol.extensions
            assert isinstance(extension, PerMessageDeflate)
            assert extension.remote_no_context_takeover  # the server compresses each message alone
            assert plain.protocol.extensions == []
            pusher = spawn(
                [
                    sys.executable,
                    "manage.py",
                    "push_data",
                    "--topic",
                    topic,
                    "--count",
                    "20",
                    "--rate",
                    "100",
                ],
                os.environ,
            )
            try:
                received = [await receive_frames(ws, "data", 20, seconds=15) for ws in (deflating, plain)]
            finally:
                stop(pusher)
            assert received[0] == received[1]
            assert [f["seq"] for f in received[0]] == list(
                range(received[0][0]["seq"], received[0][0]["seq"] + 20)
            )
            await deflating.send("echo me")
            assert await next_echo(deflating) == "echo me"
