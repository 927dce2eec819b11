"""The WebSocket connections open in this process: counted, and told to go elsewhere on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

logger = logging.getLogger(__name__)

# ASGI extension the production server (wsproject/server.py) offers in a WebSocket's scope: a function
# that writes a text frame now, if the socket is open and writable, and says whether it did. Consumers
# on other servers use the normal ``send``.
DIRECT_SEND_TEXT = "x-direct-send-text"

# RFC 6455: the server is going away; clients reconnect (to another replica behind the balancer).
CLOSE_GOING_AWAY = 1001


class Closable(Protocol):
    async def close(self, code: int | None = None, reason: str | None = None) -> None: ...


_open: set[Closable] = set()
_all_closed: asyncio.Event | None = None  # exists while close_all() waits


def opened(connection: Closable) -> None:
    """Called when a connection is accepted."""
    _open.add(connection)


def closed(connection: Closable) -> None:
    """Called when a connection has closed."""
    _open.discard(connection)
    if not _open and _all_closed is not None:
        _all_closed.set()


def count() -> int:
    return len(_open)


async def close_all(code: int = CLOSE_GOING_AWAY, grace: float = 3.0) -> int:
    """Close every open connection with ``code`` and wait (up to ``grace`` seconds) until they are gone.

    Called on shutdown, after the server stopped accepting. Returns how many were still open after
    the wait (the ASGI server then drops those).
    """
    global _all_closed
    connections = list(_open)
    if not connections:
        return 0
    logger.info("Closing %d WebSocket connections with %d", len(connections), code)
    _all_closed = asyncio.Event()
    await asyncio.gather(*(c.close(code=code) for c in connections), return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_all_closed.wait(), grace)
    return len(_open)
