"""Server-Sent Events on real servers: ``curl -N`` on both (daphne's runserver and uvicorn), the same
numbering as a WebSocket, through the repo's nginx, and a client that stops reading.

Every wait is on a line of output or an event, with a timeout scaled by ``TEST_TIMEOUT_FACTOR``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from echo.publishing import apublish
from tests.helpers.clients import receive_frames
from tests.helpers.nginx import require_nginx, start_nginx
from tests.helpers.processes import SERVER_COMMANDS, Server, http_get, metric, start_server, timeout

pytestmark = pytest.mark.system  # starts processes of its own (docs/testing.md: tiers)


class Curl:
    """``curl -N URL`` as a process; its output parsed into SSE events (type, data, id) on a thread."""

    def __init__(self, url: str, *headers: str, include_headers: bool = False) -> None:
        command = ["curl", "-sS", "-N", *(["-i"] if include_headers else []), url]
        for header in headers:
            command += ["-H", header]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._event, self._data, self._id = "message", [], ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\r\n"))
        self.lines.put(None)

    def _take(self, line: str) -> None:
        self.seen.append(line)
        if not line:
            if self._data:
                self.events.append((self._event, "\n".join(self._data), self._id))
            self._event, self._data = "message", []
        elif line.startswith("data: "):
            self._data.append(line[6:])
        elif line.startswith("event: "):
            self._event = line[7:]
        elif line.startswith("id: "):
            self._id = line[4:]

    def wait_until(self, predicate: Callable[[Curl], bool], seconds: float = 15) -> None:
        deadline = time.monotonic() + timeout(seconds)
        while not predicate(self):
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"curl: not within {seconds} s; it read:\n" + "\n".join(self.seen)
                ) from None
            if line is None:
                raise AssertionError("curl exited:\n" + "\n".join(self.seen))
            self._take(line)

    def data(self) -> list[dict[str, Any]]:
        return [json.loads(data) for kind, data, _ in self.events if kind == "message"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout(10))


def joined(curl: Curl) -> bool:
    """True once the stream said how soon to reconnect: it is in its topics' groups by then."""
    return any(line.startswith("retry:") for line in curl.seen)


async def until(curl: Curl, predicate: Callable[[Curl], bool], seconds: float = 15) -> None:
    await asyncio.to_thread(curl.wait_until, predicate, seconds)


async def test_a_publish_reaches_a_websocket_and_curl_identically_numbered(
    any_server: Server, topic: str
) -> None:
    curl = Curl(any_server.http_url(f"/events/?topics={topic}&history=0"))
    try:
        async with websockets.connect(any_server.ws_url(f"/ws/echo/?topics={topic}&history=0")) as ws:
            await until(curl, joined)
            published = [await apublish(topic, {"n": n}) for n in range(3)]
            frames = await receive_frames(ws, count=3)
            await until(curl, lambda c: len(c.data()) == 3)
        assert [(f["epoch"], f["seq"]) for f in frames] == [(p.epoch, p.seq) for p in published]
        assert curl.data() == frames  # the same JSON frame, field for field
        ids = [event_id for kind, _, event_id in curl.events if kind == "message"]
        assert ids == [f"{topic}:{p.seq}:{p.epoch}" for p in published]
    finally:
        curl.stop()


async def test_curl_resumes_from_last_event_id_with_no_gap_and_no_duplicate(
    any_server: Server, topic: str
) -> None:
    first = Curl(any_server.http_url(f"/events/?topics={topic}&history=0"))
    await until(first, joined)
    for n in range(3):
        await apublish(topic, {"n": n})
    await until(first, lambda c: len(c.data()) == 3)
    first.stop()
    last_id = first.events[-1][2]
    for n in range(3, 5):  # published while nobody reads
        await apublish(topic, {"n": n})
    second = Curl(any_server.http_url(f"/events/?topics={topic}"), f"Last-Event-ID: {last_id}")
    try:
        await until(second, lambda c: len(c.data()) == 2)
        await apublish(topic, {"n": 5})
        await until(second, lambda c: len(c.data()) == 3)
        assert [f["seq"] for f in first.data() + second.data()] == [1, 2, 3, 4, 5, 6]
    finally:
        second.stop()


async def test_through_nginx_events_arrive_unbuffered(
    server_env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    binary = require_nginx()
    env = {**server_env, "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with (
        start_server(SERVER_COMMANDS["production"], env) as server,
        start_nginx(binary, [server.port], tmp_path) as nginx,
    ):
        curl = Curl(nginx.http_url(f"/events/?topics={topic}&history=0"), include_headers=True)
        try:
            await until(curl, joined)
            assert any(line.lower().startswith("content-type: text/event-stream") for line in curl.seen)
            for n in range(3):  # each one must arrive before the next is published: nothing held back
                await apublish(topic, {"n": n})
                await until(curl, lambda c, n=n: len(c.data()) == n + 1, seconds=5)
        finally:
            curl.stop()


def stalled_stream(port: int, path: str) -> socket.socket:
    """An event stream whose client reads the response's headers and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert b" 200 " in sock.recv(1024).split(b"\r\n", 1)[0]
    return sock


async def test_a_stream_that_stops_reading_is_dropped_and_costs_its_neighbours_nothing(
    server_env: dict[str, str], topic: str
) -> None:
    env = {**server_env, "WS_STALL_SECONDS": "1", "CHANNEL_LAYER_CAPACITY": "200"}
    with start_server(SERVER_COMMANDS["production"], env) as server:
        reader = Curl(server.http_url(f"/events/?topics={topic}&history=0"))
        sock = await asyncio.to_thread(stalled_stream, server.port, f"/events/?topics={topic}&history=0")
        try:
            await until(reader, joined)
            bulk = {f"series_{i:02d}_{'x' * 50}": float(i) for i in range(32)}  # about 2.5 KB a frame
            sent = 0
            dropped = "has not read its HTTP response"
            while not any(dropped in line for line in server.output.text().splitlines()):
                for _ in range(100):
                    await apublish(topic, bulk)
                sent += 100
                # The neighbour keeps up (it never falls CHANNEL_LAYER_CAPACITY behind); the other piles up.
                await until(reader, lambda c, sent=sent: len(c.data()) == sent, seconds=30)
                assert sent < 20_000, "the stalled stream was never dropped:\n" + server.output.text()
            # Meanwhile its sends waited (flow control): what piled up for it is its layer queue, bounded
            # by CHANNEL_LAYER_CAPACITY (dropped past it: tests/test_sse.py), until it was aborted.
            # The neighbour that reads got every frame, in order.
            await until(reader, lambda c: len(c.data()) == sent, seconds=30)
            assert [f["seq"] for f in reader.data()] == list(range(1, sent + 1))
            assert metric(server, 'http_aborted_total{reason="stalled_client"}') >= 1
            assert http_get(server.http_url("/healthz"))[0] == 200
        finally:
            sock.close()
            reader.stop()


async def test_a_server_stopping_ends_its_streams_at_once_without_a_traceback(
    server_env: dict[str, str],
) -> None:
    """SIGTERM: an open stream is ended (curl sees the response end), the server exits well within its
    graceful timeout, and its log has no traceback (uvicorn alone would cancel the app after 5 s)."""
    from tests.helpers.processes import stop

    with start_server(SERVER_COMMANDS["production"], server_env) as server:
        curl = Curl(server.http_url("/events/?topics=stopping&history=0"))
        try:
            await until(curl, joined)
            started = time.monotonic()
            stop(server.process, signal.SIGTERM)
            stopped_in = time.monotonic() - started
            assert await asyncio.to_thread(curl.process.wait, timeout(10)) is not None  # the response ended
        finally:
            curl.stop()
        log = server.output.drain()
    assert stopped_in < 4, f"stopped in {stopped_in:.1f} s"
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
