"""WebSocket clients in tests: what the server sends them, and a client that stops reading.

Every wait has a timeout scaled by ``TEST_TIMEOUT_FACTOR`` (``processes.timeout``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from base64 import b64encode
from typing import Any

from tests.helpers.processes import timeout

SERVER_FRAME_TYPES = ("data", "presence", "reset", "error")


def is_server_frame(message: str | bytes) -> bool:
    """True for a frame the server sends on its own (data, presence...), not an echo."""
    return isinstance(message, str) and any(message.startswith(f'{{"type":"{t}"') for t in SERVER_FRAME_TYPES)


async def next_echo(ws: Any, seconds: float = 5.0) -> str | bytes:
    """The next frame from a `websockets` connection that is an echo, skipping server frames."""
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout(seconds))
        if not is_server_frame(message):
            return message


def data_frames(text: str) -> list[dict[str, Any]]:
    """Parse a text frame that may carry several newline-separated JSON data frames."""
    return [json.loads(line) for line in text.split("\n") if line]


async def receive_frames(
    ws: Any, kind: str = "data", count: int = 1, seconds: float = 10, *, strict: bool = False
) -> list[dict[str, Any]]:
    """The next ``count`` frames of one type from a `websockets` connection, skipping others.

    ``strict``: fail on any frame that is neither ``kind`` nor presence, and on more than ``count``
    of ``kind`` in the text frame that completed them (otherwise the extra ones are dropped).
    """
    found: list[dict[str, Any]] = []
    while len(found) < count:
        message = await asyncio.wait_for(ws.recv(), timeout(seconds))
        for frame in data_frames(message):
            assert not strict or frame["type"] in (kind, "presence"), frame
            if frame["type"] == kind:
                found.append(frame)
    if strict:
        assert len(found) == count, found  # nothing more came in the last text frame
    return found[:count]


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


async def watch(server: Any, *topics: str) -> Any:
    """A WebSocket client of ``topics`` (live only, from the page's origin), once its first echo came
    back: it is subscribed by then."""
    import websockets

    url = server.ws_url(f"/ws/echo/?topics={','.join(topics)}&history=0")
    ws = await websockets.connect(url, origin=server.origin)
    await ws.send("*")
    assert await next_echo(ws) == "*"
    return ws


async def next_data(ws: Any, count: int) -> list[dict[str, Any]]:
    """The next ``count`` data frames, skipping presence frames and echoes."""
    frames: list[dict[str, Any]] = []
    while len(frames) < count:
        message = await asyncio.wait_for(ws.recv(), timeout(10))
        if isinstance(message, str) and message.startswith('{"type":'):
            frames += [frame for frame in data_frames(message) if frame["type"] == "data"]
    assert len(frames) == count, frames
    return frames
