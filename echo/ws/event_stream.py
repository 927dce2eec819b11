"""A connection's way out as Server-Sent Events: each frame one SSE event, its ``id`` the client's position.

A frame's text is the JSON a WebSocket client gets, unchanged, as the event's ``data``. Data frames
are unnamed events (``onmessage``); every other frame is named by its type (``event: reset``,
``presence``, ``warning``, ``error``). A data frame or a reset moves the client's position in its
topic, and the event then carries the client's position in every topic it has one in, in the form of
the ``since`` parameter (``a:41:3f9a2c1b,b:7:0c1d2e3f``): the browser's ``EventSource`` sends the last
one back as ``Last-Event-ID`` when it reconnects, so it resumes exactly, with no code of its own.

The position is read from the frame's own text (a data frame starts ``{"type":"data","topic":...,
"epoch":...,"seq":...``, ``echo.protocol``), after the relay decided to send it (``echo.ws.relay``,
the one place frames are deduped): nothing here decides what is sent, only how it is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from echo.ops import metrics
from echo.protocol import Position
from echo.ws.sending import BATCH_CHARS, Sender

CONTENT_TYPE = b"text/event-stream; charset=utf-8"
# What every stream's response says: not cached, not buffered by nginx (X-Accel-Buffering), and how
# soon the browser reconnects after the stream ends (the retry field, in ms, sent first).
HEADERS = [
    (b"content-type", CONTENT_TYPE),
    (b"cache-control", b"no-cache, no-store"),
    (b"x-accel-buffering", b"no"),
]
RETRY_MS = 1000

FRAME_TYPE = re.compile(r'\{"type":"([a-z_]{1,32})"')
DATA_POSITION = re.compile(
    r'\{"type":"data","topic":"([a-z0-9_-]{1,48})","epoch":"([0-9a-z]{1,32})","seq":([0-9]{1,16})'
)
RESET_POSITION = re.compile(
    r'\{"type":"reset","topic":"([a-z0-9_-]{1,48})","epoch":(?:"([0-9a-z]{1,32})"|null)'
)


def position_id(positions: Iterable[tuple[str, Position]]) -> str:
    """The ``id`` of an event: ``topic:seq:epoch`` per topic (``topic:0`` when it has no stream)."""
    return ",".join(
        f"{topic}:{seq}:{epoch}" if epoch is not None else f"{topic}:{seq}"
        for topic, (epoch, seq) in positions
    )


class EventStreamSender(Sender):
    """Sends one stream's frames as SSE events, in the body of one HTTP response; keeps the client's
    position in each topic for the events' ids.

    There is no synchronous write (``write_now`` is always False): every frame takes the queued route,
    and ``send`` waits while the server's buffer for this client is full (uvicorn's flow control), so a
    client that stops reading backs up into the layer's bounded queue, not memory (``echo.sse``).
    """

    __slots__ = ("positions",)

    def __init__(
        self, base_send: Callable[[dict[str, Any]], Awaitable[None]], since: dict[str, Position]
    ) -> None:
        super().__init__(base_send)
        self.positions = dict(since)  # topic -> the client's position, in the order the client named them

    def write_now(self, text: str) -> bool:
        return False

    def event(self, frame: str) -> str:
        """One frame as an SSE event (its text ends with the blank line that ends the event)."""
        kind = match.group(1) if (match := FRAME_TYPE.match(frame)) else "message"
        head = "" if kind == "data" else f"event: {kind}\n"
        if kind in ("data", "reset") and self._moved(kind, frame):
            head += f"id: {position_id(self.positions.items())}\n"
        if "\n" in frame:  # never for the JSON of echo.protocol; a data line cannot hold one
            return head + "".join(f"data: {line}\n" for line in frame.split("\n")) + "\n"
        return f"{head}data: {frame}\n\n"

    def _moved(self, kind: str, frame: str) -> bool:
        """Record the position a data frame or a reset leaves the client at; False if it names none."""
        if kind == "data":
            if match := DATA_POSITION.match(frame):
                self.positions[match.group(1)] = Position(match.group(2), int(match.group(3)))
                return True
            parsed = json.loads(frame)  # a frame whose fields come in another order: read it whole
            if isinstance(parsed.get("seq"), int) and isinstance(parsed.get("epoch"), str):
                self.positions[parsed["topic"]] = Position(parsed["epoch"], parsed["seq"])
                return True
            return False  # not numbered (a layer without history): no position to keep
        if match := RESET_POSITION.match(frame):
            self.positions[match.group(1)] = Position(match.group(2), 0)  # nothing of the new epoch yet
            return True
        return False

    def note(self, positions: Iterable[tuple[str, Position | None]]) -> str:
        """Called once the connect-time frames are out: take the streams' positions in topics the
        client has none in yet (it asked for no history of them, say), and return an event that only
        sets the id (not dispatched by the browser), or "" if nothing changed."""
        changed = False
        for topic, position in positions:
            if position is not None and topic not in self.positions:
                self.positions[topic] = position
                changed = True
        return f"id: {position_id(self.positions.items())}\n\n" if changed else ""

    async def send_body(self, text: str) -> None:
        """Write events (or a comment) to the response now."""
        if not self.closing:
            await self.send({"type": "http.response.body", "body": text.encode(), "more_body": True})

    async def send_text(self, text: str) -> None:
        await self.send_body(self.event(text))

    async def send_batched(self, frames: list[str]) -> None:
        """Send frames as events, several in one write up to about ``BATCH_CHARS``."""
        if self.closing or not frames:
            return
        batch: list[str] = []
        size = 0
        for frame in frames:
            event = self.event(frame)
            batch.append(event)
            size += len(event)
            if size >= BATCH_CHARS:
                metrics.inc("sse_events_out_total", amount=len(batch))
                await self.send_body("".join(batch))
                batch, size = [], 0
        if batch:
            metrics.inc("sse_events_out_total", amount=len(batch))
            await self.send_body("".join(batch))

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """End the response (once): the client sees the stream end (``EventSource`` reconnects after
        ``retry``)."""
        self.closing = True
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
