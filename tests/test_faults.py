"""Faults against real processes: Redis going away and coming back, a client that stops reading,
graceful shutdown, and the probes that report all this."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode

import devenv
import psutil
import pytest
import websockets

from tests.redis_process import RedisProcess
from tests.support import (
    OutputWatcher,
    Server,
    data_frames,
    http_get,
    metric,
    next_echo,
    spawn,
    start_server,
    stop,
    timeout,
)

PUSH = [sys.executable, "manage.py", "push_data", "--source", "sine"]


def get(url: str) -> tuple[int, dict]:
    status, body = http_get(url)
    return status, json.loads(body or "{}")


async def test_healthz_and_metrics_answer_whatever_the_host(production_server: Server) -> None:
    status, body = await asyncio.to_thread(get, production_server.http_url("/healthz"))
    assert (status, body["status"]) == (200, "ok")
    with urllib.request.urlopen(production_server.http_url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    for name in ("ws_connections_open", "ws_frames_in_total", "ws_dropped_total", "layer_redis_disconnects"):
        assert f"\n{name}" in f"\n{text}" or f"\n{name}{{" in f"\n{text}", name


async def test_redis_going_away_and_coming_back(
    server_env: dict[str, str], private_redis: RedisProcess, topic: str
) -> None:
    env = {**server_env, "REDIS_URL": private_redis.url}
    with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
        url = server.ws_url(f"/ws/echo/?topics={topic}&history=0")
        async with websockets.connect(url, origin=server.origin) as ws:
            pusher = spawn([*PUSH, "--topic", topic, "--rate", "20"], env)
            pushed = OutputWatcher(pusher)
            try:
                first = [f async for f in _data(ws, 3)]
                private_redis.stop()
                # The server stays up, logs it plainly, says why it is unhealthy; echo keeps working.
                await asyncio.to_thread(
                    server.output.wait_for, r"Redis at \S+ unreachable .* retrying in", 15
                )
                status, body = await asyncio.to_thread(get, server.http_url("/healthz"))
                assert status == 503 and "Redis unreachable" in body["reason"]
                await ws.send("echo without redis")
                assert await next_echo(ws, 10) == "echo without redis"
                await asyncio.to_thread(pushed.wait_for, r"unreachable .*retrying in", 20)
                private_redis.start()  # same port, empty: the numbering starts again
                await asyncio.to_thread(server.output.wait_for, r"Redis at \S+ is back", 20)
                assert (await asyncio.to_thread(get, server.http_url("/healthz")))[0] == 200
                # Pushes flow again by themselves, and the client is told its series restarted.
                after = [f async for f in _data(ws, 3, kinds=("data", "reset"), seconds=30)]
                await asyncio.to_thread(pushed.wait_for, r"reachable again after", 20)
            finally:
                assert await asyncio.to_thread(stop, pusher) == 0
        assert pusher.returncode == 0 and "Traceback" not in pushed.drain()
    assert [f["type"] for f in first] == ["data"] * 3
    assert any(f["type"] == "data" for f in after)
    assert "Traceback" not in server.output.text()


async def _data(ws, count: int, kinds=("data",), seconds: float = 15):  # type: ignore[no-untyped-def]
    while count:
        for frame in data_frames(await asyncio.wait_for(ws.recv(), timeout(seconds))):
            if frame["type"] in kinds and count:
                count -= 1
                yield frame


def open_raw_client(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads its socket again."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b" 101 " in sock.recv(4096).split(b"\r\n", 1)[0]
    return sock


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_dropped_without_growing_memory_or_slowing_others(
    server_env: dict[str, str], topic: str
) -> None:
    env = {**server_env, "WS_STALL_SECONDS": "2"}
    with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
        rss = psutil.Process(server.process.pid)
        baseline = rss.memory_info().rss
        path = f"/ws/echo/?topics={topic}&history=0"
        stuck = await asyncio.to_thread(open_raw_client, server.port, path)
        latencies: list[float] = []
        seqs: list[int] = []
        peak = baseline
        async with websockets.connect(server.ws_url(path), origin=server.origin, max_size=None) as ws:
            # Flat out through stdin: 8,000 frames of 32 series (~6 MB), more than the kernel buffers
            # between the server and the stuck client can absorb.
            command = [sys.executable, "manage.py", "push_data", "--source", "stdin", "--topic", topic]
            pusher = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            line = json.dumps({f"series_{n:02d}": 1234.5678 + n for n in range(32)}) + "\n"
            feeder = asyncio.ensure_future(asyncio.to_thread(_feed, pusher, line, 8000))
            try:
                while not seqs or seqs[-1] < 8000:
                    for frame in data_frames(await asyncio.wait_for(ws.recv(), timeout(30))):
                        if frame["type"] == "data":
                            latencies.append(time.time() - frame["ts"])
                            seqs.append(frame["seq"])
                    peak = max(peak, rss.memory_info().rss)
                # The stuck client was dropped, and the log says so.
                await asyncio.to_thread(
                    server.output.wait_for, r"Dropping .* not read its socket|fell \d+ events behind"
                )
            finally:
                stuck.close()
                await feeder
                await asyncio.to_thread(pusher.wait, timeout(30))
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the reading client lost nothing"
        latencies.sort()
        assert latencies[int(len(latencies) * 0.99)] < 1.0, "the reading client was held up"
        assert peak - baseline < 100 * 1024 * 1024, f"server memory grew by {(peak - baseline) >> 20} MB"


def _feed(process: subprocess.Popen[bytes], line: str, count: int) -> None:
    assert process.stdin is not None
    data = line.encode()
    for _ in range(count):
        process.stdin.write(data)
    process.stdin.close()


async def test_sigterm_closes_sockets_with_1001_and_exits_promptly(production_server: Server) -> None:
    async with websockets.connect(
        production_server.ws_url("/ws/echo/?history=0"), origin=production_server.origin
    ) as ws:
        await ws.send("hello")
        assert await next_echo(ws) == "hello"
        started = time.monotonic()
        production_server.process.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), timeout(10))
        assert closed.value.rcvd.code == 1001
    await asyncio.to_thread(production_server.process.wait, timeout(10))
    assert time.monotonic() - started < 5
    assert "Traceback" not in production_server.output.drain()


async def test_clients_vanishing_while_data_is_relayed_to_them_leave_no_error_behind(
    any_server: Server, topic: str
) -> None:
    """Sends to a client that has just gone are part of normal life: no traceback, nothing held."""
    server, leaving = any_server, 100
    url = server.ws_url(f"/ws/echo/?topics={topic}&history=0")
    pusher = spawn([*PUSH, "--topic", topic, "--rate", "2000"], os.environ)
    try:
        async with websockets.connect(url, origin=server.origin, max_size=None) as witness:
            clients = await asyncio.gather(
                *(websockets.connect(url, origin=server.origin, max_size=None) for _ in range(leaving))
            )
            for ws in clients:  # every one of them is being relayed to
                await asyncio.wait_for(ws.recv(), timeout(10))
            for ws in clients:  # all at once, mid-stream, without a closing handshake
                ws.transport.abort()
            # Every consumer has ended once the server counts the witness alone (asked until it does).
            async with asyncio.timeout(timeout(10)):
                while await asyncio.to_thread(metric, server, "ws_connections_open") != 1:
                    pass
            await witness.send("still here")
            assert await next_echo(witness) == "still here"
    finally:
        stop(pusher)
    output = server.output.text()
    assert "Traceback" not in output and "ERROR" not in output, output[-3000:]
