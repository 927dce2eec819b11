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

import psutil
import pytest
import websockets

from scripts import devenv
from scripts.redis_server import RedisServer
from tests.helpers.clients import data_frames, next_echo, open_raw_client
from tests.helpers.processes import (
    OutputWatcher,
    Server,
    http_get,
    metric,
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


class Recorder:
    """Every frame one client receives, as (arrival time, frame), read in the background."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, dict]] = []
        self.echoes: list[str | bytes] = []
        self.changed = asyncio.Condition()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            async with self.changed:
                if isinstance(message, str) and message.startswith('{"type":'):
                    self.frames.extend((time.monotonic(), frame) for frame in data_frames(message))
                else:
                    self.echoes.append(message)
                self.changed.notify_all()

    def data(self) -> list[dict]:
        return [frame for _, frame in self.frames if frame["type"] == "data"]

    async def until(self, predicate, what: str, seconds: float = 20):  # type: ignore[no-untyped-def]
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: predicate(self)), timeout(seconds))
            except TimeoutError:
                raise AssertionError(f"no {what} within {seconds} s; got {self.frames[-5:]}") from None


def positions(frames: list[dict]) -> list[tuple[str, int]]:
    return [(frame["epoch"], frame["seq"]) for frame in frames]


async def test_redis_restarted_empty_resets_each_client_and_live_data_is_back_within_2_s(
    server_env: dict[str, str], private_redis: RedisServer, topic: str
) -> None:
    env = {**server_env, "REDIS_URL": private_redis.url}
    with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
        url = server.ws_url(f"/ws/echo/?topics={topic}&history=0")
        async with websockets.connect(url, origin=server.origin) as ws:
            client = Recorder(ws)
            pusher = spawn([*PUSH, "--topic", topic, "--rate", "20", "-v", "2"], env)
            pushed = OutputWatcher(pusher)
            try:
                await client.until(lambda c: len(c.data()) >= 3, "data before the outage")
                private_redis.stop()
                # The server stays up, logs it plainly, says why it is unhealthy; echo keeps working.
                await asyncio.to_thread(
                    server.output.wait_for, r"Redis at \S+ unreachable .* retrying in", 15
                )
                status, body = await asyncio.to_thread(get, server.http_url("/healthz"))
                assert status == 503 and "Redis unreachable" in body["reason"]
                await ws.send("echo without redis")
                await client.until(lambda c: "echo without redis" in c.echoes, "echo")
                # Long enough for both retry loops to reach their longest delay (1 s).
                await asyncio.to_thread(pushed.wait_for, r"unreachable .*retrying in 1.0 s", 20)
                before = positions(client.data())
                private_redis.start()  # same port, empty: every stream starts again, in a new epoch
                back = time.monotonic()
                await client.until(
                    lambda c: any(f["epoch"] != before[0][0] for f in c.data()), "data of the new epoch"
                )
                arrived = next(
                    t for t, f in client.frames if f["type"] == "data" and f["epoch"] != before[0][0]
                )
                await client.until(lambda c: len(c.data()) >= len(before) + 5, "more data of the new epoch")
                assert (await asyncio.to_thread(get, server.http_url("/healthz")))[0] == 200
            finally:
                assert await asyncio.to_thread(stop, pusher) == 0
            client.task.cancel()
    old, new = before[0][0], client.data()[-1]["epoch"]
    assert old != new
    # Live data within 2 s of Redis accepting connections again (publisher and server both retry).
    assert arrived - back <= timeout(2.0), f"first frame of the new epoch {arrived - back:.2f} s after Redis"
    # The client was told before any frame of the new epoch, and then got that epoch from seq 1 with
    # nothing dropped as "already sent".
    kinds = [(f["type"], f.get("epoch")) for _, f in client.frames if f["type"] in ("data", "reset")]
    first_new = kinds.index(("data", new))
    assert ("reset", new) in kinds[:first_new] or ("reset", None) in kinds[:first_new]
    assert [k for k in kinds[:first_new] if k[0] == "data"] == [("data", old)] * len(before)
    after = [seq for epoch, seq in positions(client.data()) if epoch == new]
    assert after == list(range(1, len(after) + 1))
    published = [line.split()[2:] for line in pushed.drain().splitlines() if line.startswith("published ")]
    assert [(e, int(n)) for e, n in published if e == new][: len(after)] == [(new, n) for n in after]
    assert "Traceback" not in pushed.text() and "Traceback" not in server.output.text()


async def test_redis_restarted_with_its_data_carries_every_stream_on_without_a_reset(
    server_env: dict[str, str], topic: str
) -> None:
    redis = RedisServer(persistent=True)  # append-only file, synced on every write
    redis.start()
    env = {**server_env, "REDIS_URL": redis.url}
    try:
        with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
            url = server.ws_url(f"/ws/echo/?topics={topic}&history=0")
            pusher = spawn([*PUSH, "--topic", topic, "--rate", "20"], env)
            pushed = OutputWatcher(pusher)
            try:
                async with websockets.connect(url, origin=server.origin) as staying:
                    stayer = Recorder(staying)
                    async with websockets.connect(url, origin=server.origin) as leaving:
                        leaver = Recorder(leaving)
                        await leaver.until(lambda c: len(c.data()) >= 3, "data before the outage")
                        await stayer.until(lambda c: len(c.data()) >= 3, "data before the outage")
                    left_at = positions(leaver.data())[-1]
                    redis.restart(keep_data=True)
                    await asyncio.to_thread(pushed.wait_for, r"reachable again after", 20)
                    await stayer.until(lambda c: c.data()[-1]["seq"] >= left_at[1] + 10, "data after it")
                    # The one that left comes back asking for what it missed: it gets exactly that.
                    since = f"&since={topic}:{left_at[1]}:{left_at[0]}"
                    async with websockets.connect(url + since, origin=server.origin) as back:
                        returner = Recorder(back)
                        await returner.until(
                            lambda c: c.data() and c.data()[-1]["seq"] > left_at[1] + 12, "missed"
                        )
                    for recorder in (stayer, leaver, returner):
                        recorder.task.cancel()
            finally:
                assert await asyncio.to_thread(stop, pusher) == 0
    finally:
        redis.stop()
    epoch = left_at[0]
    for recorder in (stayer, returner):
        assert not [f for _, f in recorder.frames if f["type"] == "reset"], "a needless reset"
        assert {f["epoch"] for f in recorder.data()} == {epoch}
    seqs = [f["seq"] for f in stayer.data()]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "the stream carried on with no hole"
    missed = returner.data()
    assert [f["seq"] for f in missed] == list(range(left_at[1] + 1, missed[-1]["seq"] + 1))
    assert missed[0].get("replay") is True


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
        assert latencies[int(len(latencies) * 0.99)] < timeout(1.0), "the reading client was held up"
        assert peak - baseline < 100 * 1024 * 1024, f"server memory grew by {(peak - baseline) >> 20} MB"
    # Dropped by the server (stalled) and by the layer (overflow), in either order: no second close.
    assert "Traceback" not in server.output.text(), server.output.text()[-3000:]


FLOOD_SECONDS = 20.0


def flood_without_reading(sock: socket.socket, payload_bytes: int, seconds: float) -> tuple[int, str]:
    """Send maximum-size text frames as fast as the socket takes them, never reading; return
    (frames sent, how it ended)."""
    header = b"\x81\xff" + payload_bytes.to_bytes(8, "big") + b"\0\0\0\0"  # masked with a zero key
    frame = header + b"x" * payload_bytes
    sock.settimeout(0.2)
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(frame)
        except TimeoutError:
            continue  # the server stopped reading: exactly what it should do
        except OSError as exc:
            return sent, f"{type(exc).__name__}"
        sent += 1
    return sent, "still open"


@pytest.mark.slow
async def test_a_client_that_floods_and_never_reads_cannot_grow_the_server(
    server_env: dict[str, str], topic: str
) -> None:
    """2.5 GB in 20 s before reading paused again: now the server stops reading instead."""
    env = {**server_env, "WS_STALL_SECONDS": "5"}
    with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
        process = psutil.Process(server.process.pid)
        path = f"/ws/echo/?topics={topic}&history=0"
        async with websockets.connect(server.ws_url(path), origin=server.origin) as ws:
            witness = Recorder(ws)
            pusher = spawn([*PUSH, "--topic", topic, "--rate", "50"], os.environ)
            try:
                await witness.until(lambda c: len(c.data()) >= 5, "data before the flood")
                baseline = process.memory_info().rss
                flooder = await asyncio.to_thread(open_raw_client, server.port, path)
                flood = asyncio.ensure_future(
                    asyncio.to_thread(flood_without_reading, flooder, 65536, timeout(FLOOD_SECONDS))
                )
                peak = baseline
                while not flood.done():
                    peak = max(peak, process.memory_info().rss)
                    await asyncio.wait([flood], timeout=0.1)
                sent, ended = flood.result()
                flooder.close()
                before = len(witness.data())
                await witness.until(lambda c: len(c.data()) >= before + 5, "data after the flood")
            finally:
                stop(pusher)
            witness.task.cancel()
        assert sent > 5, f"the flood sent only {sent} frames"
        grown = (peak - baseline) / 2**20
        assert grown <= 64, f"server memory grew by {grown:.0f} MB during a {FLOOD_SECONDS:.0f} s flood"
        # Dropped with a close code (it cannot read it, but it was sent), counted, and logged once.
        assert await asyncio.to_thread(metric, server, 'ws_dropped_total{reason="stalled_client"}') == 1
        assert await asyncio.to_thread(metric, server, 'ws_closed_total{code="1013"}') == 1
        server.output.wait_for(r"Dropping .* not read its socket for 5 s \(1013\)")
    seqs = [f["seq"] for f in witness.data()]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "the well-behaved client saw a gap"
    assert ended in ("still open", "ConnectionResetError", "BrokenPipeError"), ended


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
    assert time.monotonic() - started < timeout(5)
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
