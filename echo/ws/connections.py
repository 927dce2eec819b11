"""The WebSocket connections open in this process (for ``/healthz`` and ``/metrics``), and the names the
production server and the consumer agree on."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import NamedTuple

# ASGI extension the production server (wsproject/uvicorn_ws.py) offers in a WebSocket's scope: a
# function that writes a text frame now, if the socket is open and writable, and says whether it did.
# Consumers on other servers use the normal ``send`` (echo/ws/delivery.py).
DIRECT_SEND_TEXT = "x-direct-send-text"
# And a function ``(on_lost) -> DirectWriter | None``: the socket's own write, for a caller that
# writes one prepared frame to many sockets in one loop (echo/ws/lanes.py), while the socket is open
# and writable; ``on_lost()`` is called once, synchronously, as soon as it no longer is.
DIRECT_WRITER = "x-direct-writer"


class DirectWriter(NamedTuple):
    """What ``DIRECT_WRITER`` gives: the transport's write, and the socket's frames of a text."""

    write: Callable[[bytes], None]  # writes bytes to the socket; never blocks
    kind: Hashable  # sockets of one kind take the same bytes for the same text
    frame: Callable[[str], bytes]  # a text frame's bytes, made once per kind and text


# A count, not a set of them: the server holds every connection already, and a set entry is bytes
# more on each.
_open = 0


def opened() -> None:
    """Called when a connection is accepted."""
    global _open
    _open += 1


def closed() -> None:
    """Called once when a connection that ``opened()`` has closed."""
    global _open
    _open -= 1


def count() -> int:
    return _open
