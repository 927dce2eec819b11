"""A connection's way out to its socket: the ASGI server's send, and its synchronous write when it has one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from echo.ops.metrics import hot_counts
from echo.ws.connections import DirectWriter

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

# Several frames go out newline-joined in text frames of at most this many characters.
BATCH_CHARS = 64 * 1024


class Sender:
    """Sends one connection's frames; knows when the connection is closing and sends nothing more.

    ``direct`` is the production server's synchronous write (``x-direct-send-text``): a pushed
    frame's bytes, made once for every connection, are written at once if the socket takes them.
    ``direct_writer`` (``x-direct-writer``) hands out the socket's own write, for ``echo.ws.lanes``.
    """

    # One per connection, held for its life.
    __slots__ = ("_closing", "base_send", "direct", "direct_writer", "on_closing")

    def __init__(
        self,
        base_send: Callable[[dict[str, Any]], Awaitable[None]],
        direct: Callable[[str], bool] | None = None,
        direct_writer: Callable[[Callable[[], None]], DirectWriter | None] | None = None,
    ) -> None:
        self.base_send = base_send
        self.direct = direct
        self.direct_writer = direct_writer
        self._closing = False
        self.on_closing: Callable[[], None] | None = None  # called when closing becomes true

    @property
    def closing(self) -> bool:
        """True once the server decided to close: nothing more is sent but the close."""
        return self._closing

    @closing.setter
    def closing(self, closing: bool) -> None:
        self._closing = closing
        if closing and self.on_closing is not None:
            self.on_closing()

    def write_now(self, text: str) -> bool:
        """Write a text frame now if the server can and the socket takes it; True if it did."""
        return not self._closing and self.direct is not None and self.direct(text)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one ASGI message to the socket: the hot path, without the base consumer's layers."""
        try:
            await self.base_send(message)
        except OSError:
            # The client went away while this was on its way (ASGI servers raise an OSError then);
            # the disconnect event that follows ends the consumer.
            self.closing = True
        except RuntimeError as exc:
            # The server closed the socket itself (a frame too big, invalid UTF-8) while frames it
            # had already passed on were still queued for us: what is left has nowhere to go.
            if "websocket.close" not in str(exc):
                raise
            self.closing = True

    async def send_text(self, text: str) -> None:
        hot_counts.frames_out += 1
        if not self.write_now(text):  # else the server's send, which waits until the socket is writable
            await self.send({"type": "websocket.send", "text": text})

    async def send_batched(self, frames: list[str]) -> None:
        """Send frames newline-joined in as few text frames as ``BATCH_CHARS`` allows."""
        if self.closing:
            return
        batch: list[str] = []
        size = 0
        for frame in frames:
            if batch and size + len(frame) > BATCH_CHARS:
                await self.send_text("\n".join(batch))
                batch, size = [], 0
            batch.append(frame)
            size += len(frame) + 1
        if batch:
            await self.send_text(batch[0] if len(batch) == 1 else "\n".join(batch))

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the socket; nothing to do if the server already did (a stalled client) or the client left."""
        self.closing = True
        message: dict[str, Any] = {"type": "websocket.close"}
        if code is not None:
            message["code"] = code
        if reason:
            message["reason"] = reason
        await self.send(message)
