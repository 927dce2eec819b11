"""A connection the server decided to close costs its neighbours nothing, and its client still hears why.

Against the production server, one worker: a client that never reads and floods frames (reconnecting
each time it is cut off) while four listeners on the same process receive ``push_data`` at 10/s; and
clients that send one oversize frame and read, which must get the close frame, never a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

import pytest
import websockets

from scripts import devenv
from tests.helpers.clients import data_frames, open_raw_client
from tests.helpers.processes import Server, spawn, start_server, stop, timeout

# The flood lasts 20 s; TEST_FLOOD_SECONDS shortens it (the contract is the same).
FLOOD_SECONDS = float(os.environ.get("TEST_FLOOD_SECONDS", "20"))
LISTENERS = 4
# Seconds from publish to a listener during the flood: 99 % of frames within the first, every frame
# within the second. (Before the server stopped parsing a closed flooder's input, neighbours waited
# 2-5 s at a time; on a loaded 2-core machine a single frame now and then takes a little over 100 ms,
# the publisher and the flooder sharing the cores, which is not what this test is about.)
P99_DELAY = 0.1
WORST_DELAY = 0.5


@dataclass
class Flood:
    """What a flooder did: connections opened, bytes written."""

    connections: int = 0
    sent: int = 0
    endings: list[str] = field(default_factory=list)


def flood(port: int, path: str, payload_bytes: int, seconds: float) -> Flood:
    """Send masked text frames of ``payload_bytes`` as fast as the socket takes them, never reading;
    when the server cuts the connection off, open another, until ``seconds`` have passed."""
    frame = _masked_text_frame(b"x" * payload_bytes)
    chunk = memoryview(frame * max(1, (256 * 1024) // len(frame)))  # whole frames: a wrap stays aligned
    done = Flood()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock = open_raw_client(port, path)
        done.connections += 1
        sock.settimeout(0.2)
        offset = 0
        try:
            while time.monotonic() < deadline:
                try:
                    sent = sock.send(chunk[offset:])
                except TimeoutError:
                    continue  # the server is not reading: fine
                done.sent += sent
                offset = (offset + sent) % len(chunk)
        except OSError as exc:
            done.endings.append(type(exc).__name__)
        finally:
            sock.close()
    return done


def _masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame, masked with a zero key (the payload goes as it is)."""
    size = len(payload)
    if size < 126:
        header = bytes([0x81, 0x80 | size])
    elif size < 65536:
        header = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


class Listener:
    """One well-behaved client of a topic: the delay of each data frame (publish to arrival), its seqs."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.delays: list[float] = []
        self.seqs: list[int] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            arrived = time.time()
            for frame in data_frames(message if isinstance(message, str) else ""):
                if frame["type"] == "data":
                    self.delays.append(arrived - frame["ts"])
                    self.seqs.append(frame["seq"])

    async def until_count(self, count: int, seconds: float = 20) -> None:
        async with asyncio.timeout(timeout(seconds)):
            while len(self.seqs) < count:
                await asyncio.wait([self.task], timeout=0.05)
                if self.task.done():
                    raise AssertionError(f"the listener stopped: {self.task.exception()!r}")


async def neighbours_during_a_flood(
    server: Server, topic: str, payload_bytes: int
) -> tuple[list[Listener], Flood]:
    """Four listeners of ``topic`` while a non-reading client floods frames of ``payload_bytes``."""
    path = f"/ws/echo/?topics={topic}&history=0"
    push = [
        sys.executable,
        "manage.py",
        "push_data",
        "--source",
        "random-walk",
        "--topic",
        topic,
        "--rate",
        "10",
    ]
    pusher = spawn(push, os.environ)
    connections = [
        await websockets.connect(server.ws_url(path), origin=server.origin) for _ in range(LISTENERS)
    ]
    try:
        listeners = [Listener(ws) for ws in connections]
        for listener in listeners:
            await listener.until_count(3)
        flooding = asyncio.to_thread(flood, server.port, "/ws/echo/?history=0", payload_bytes, FLOOD_SECONDS)
        done = await flooding
        before = [len(listener.seqs) for listener in listeners]
        for listener, count in zip(listeners, before, strict=True):
            await listener.until_count(count + 3)
    finally:
        stop(pusher)
        for ws in connections:
            await ws.close()
    return listeners, done


def check_neighbours(listeners: list[Listener], done: Flood) -> None:
    assert done.sent > 0
    for listener in listeners:
        seqs = listener.seqs
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a listener lost or doubled a frame"
        delays = sorted(listener.delays)
        p99, worst = delays[int(len(delays) * 0.99)], delays[-1]
        assert p99 < timeout(P99_DELAY), f"a listener's p99 was {p99 * 1000:.0f} ms"
        assert worst < timeout(WORST_DELAY), f"a listener waited {worst * 1000:.0f} ms for a frame"


@pytest.mark.slow
@pytest.mark.parametrize("payload_bytes", [16, 60 * 1024], ids=["16-byte", "60-KB"])
async def test_a_non_reading_flooder_costs_its_neighbours_nothing(
    server_env: dict[str, str], topic: str, payload_bytes: int
) -> None:
    env = {**server_env, "WEB_CONCURRENCY": "1"}
    with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
        listeners, done = await neighbours_during_a_flood(server, topic, payload_bytes)
        delays = sorted(d for listener in listeners for d in listener.delays)
        print(
            f"flood of {payload_bytes}-byte frames: {done.connections} connections,"
            f" {done.sent >> 20} MB sent; neighbours' delay p50 {delays[len(delays) // 2] * 1000:.1f} ms,"
            f" max {delays[-1] * 1000:.1f} ms over {len(delays)} frames"
        )
        check_neighbours(listeners, done)
        assert server.process.poll() is None
        assert "Traceback" not in server.output.text()


async def close_code_after_sending(server: Server, payload: str, errors: list[str] | None = None) -> int:
    """Send ``payload`` in one frame, read until the server closes; its close code (1006: none heard).

    The codes of the error frames received are added to ``errors``.
    """
    ws = await websockets.connect(
        server.ws_url("/ws/echo/?history=0"), origin=server.origin, max_size=None, close_timeout=timeout(5)
    )
    try:
        await ws.send(payload)
        while True:
            message = await asyncio.wait_for(ws.recv(), timeout(10))
            if errors is not None and isinstance(message, str):
                errors += [frame["code"] for frame in data_frames(message) if frame["type"] == "error"]
    except websockets.ConnectionClosed:
        await asyncio.wait_for(ws.wait_closed(), timeout(10))  # the TCP connection too
    except AttributeError:
        # websockets' client, still sending when the connection ends, aborts a transport asyncio
        # has already let go of ('NoneType' ... 'call_soon'): what it received is still there.
        pass
    finally:
        with contextlib.suppress(AttributeError):  # the same race, in its close
            await ws.close()
    received = ws.protocol.close_rcvd
    return received.code if received is not None else 1006


async def test_a_4_mib_frame_is_answered_with_1009_every_time(production_server: Server) -> None:
    payload = "x" * (4 * 1024 * 1024)
    errors: list[str] = []
    codes = [await close_code_after_sending(production_server, payload, errors) for _ in range(20)]
    assert codes == [1009] * 20, f"{codes.count(1009)} of 20 got 1009: {codes}"
    # And why: the error frame before the close. (The client may see the close before it has read
    # it, when its own send fails first; most tries read it.)
    assert errors and set(errors) == {"frame_too_big"}, errors
    assert "Traceback" not in production_server.output.text()


def raw_close_code_after_sending(port: int, payload_bytes: int) -> int:
    """As a plain socket client: write one frame of ``payload_bytes`` whole, then read the server's
    answer to its end; the close code in it (1006: no close frame, or a reset)."""
    sock = open_raw_client(port, "/ws/echo/?history=0")
    sock.settimeout(timeout(10))
    received = b""
    try:
        sock.sendall(_masked_text_frame(b"x" * payload_bytes))
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    finally:
        sock.close()
    at = received.find(b"\x88")
    if at < 0 or len(received) < at + 4:
        return 1006
    return int.from_bytes(received[at + 2 : at + 4], "big")


async def test_a_4_mib_frame_from_a_plain_socket_is_answered_with_1009_every_time(
    production_server: Server,
) -> None:
    codes = [
        await asyncio.to_thread(raw_close_code_after_sending, production_server.port, 4 << 20)
        for _ in range(20)
    ]
    assert codes == [1009] * 20, f"{codes.count(1009)} of 20 got 1009: {codes}"
