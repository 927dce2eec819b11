"""Private topics from a client's side: connecting with cookies or tokens, refusals, the rules tested."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed

from echo.publishing.broadcast import Publisher
from tests.helpers.accounts import Browser
from tests.helpers.clients import data_frames, receive_frames
from tests.helpers.processes import Server, timeout

__all__ = [
    "PROTOCOL",
    "RULES_WITH_PERMISSIONS",
    "TOKEN_PREFIX",
    "connect",
    "publish",
    "receive_frames",
    "refusal",
]

PROTOCOL = "echo.v1"
TOKEN_PREFIX = "echo.token."
RULES_WITH_PERMISSIONS = {
    "ops-*": "perm:auth.view_user",
    "team-red-*": "group:red",
    "members-*": "authenticated",
    "user-{user_id}": "owner",
    "user-*": "nobody",
    "*": "public",
}


def connect(
    server: Server, query: str, *, browser: Browser | None = None, protocols: list[str] | None = None
):
    """A WebSocket from the page's origin, with the browser's cookies and/or a token's protocols."""
    headers = {"Cookie": browser.cookie_header} if browser is not None else None
    return websockets.connect(
        server.ws_url(f"/ws/echo/?{query}"),
        origin=server.origin,
        additional_headers=headers,
        subprotocols=protocols,  # type: ignore[arg-type]
    )


async def refusal(ws: Any, *, served: bool = False) -> tuple[dict[str, Any], int | None]:
    """The error frame and close code of a refused connection; fails if any data came first, unless
    the connection was ``served`` before it is closed."""
    error = None
    try:
        while True:
            message = await asyncio.wait_for(ws.recv(), timeout(10))
            for frame in data_frames(message):
                assert served or frame["type"] == "error", f"a refused connection got {frame}"
                if frame["type"] == "error":
                    error = frame
    except ConnectionClosed as closed:
        assert error is not None, "closed without an error frame"
        return error, closed.rcvd.code if closed.rcvd else None


async def publish(topic: str, value: float, layer: object | None = None) -> int:
    return (await Publisher(layer).publish(topic, {"v": value})).seq  # type: ignore[arg-type]
