"""The WebSocket connections open in this process (for ``/healthz`` and ``/metrics``), and the names the
production server and the consumer agree on."""

from __future__ import annotations

# ASGI extension the production server (wsproject/uvicorn_ws.py) offers in a WebSocket's scope: a
# function that writes a text frame now, if the socket is open and writable, and says whether it did.
# Consumers on other servers use the normal ``send`` (echo/ws/delivery.py).
DIRECT_SEND_TEXT = "x-direct-send-text"

_open: set[object] = set()


def opened(connection: object) -> None:
    """Called when a connection is accepted."""
    _open.add(connection)


def closed(connection: object) -> None:
    """Called when a connection has closed."""
    _open.discard(connection)


def count() -> int:
    return len(_open)
