"""Everything the production server does inside uvicorn: its WebSocket and HTTP protocols, subclassed,
and its proxy-headers middleware, flattened.

uvicorn takes its protocol classes by import string (``Config(ws="wsproject.uvicorn_ws:...",
http="wsproject.uvicorn_ws:...")``): its supported way to bring your own. The subclasses override a
few methods (each calls uvicorn's own)
and relies on attributes uvicorn does not document; ``tests/test_internals.py`` has one contract test
per method and attribute it uses, and the production server refuses any uvicorn or websockets
version but the ones below (``wsproject/versions.py``). Upgrading: change the pins in
requirements.txt, run ``pytest tests/test_internals.py``, then update ``TESTED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Set
from typing import Any, ClassVar, cast

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from echo.errors import CLOSE_GOING_AWAY
from echo.ops import metrics
from echo.protocol import error_frame
from echo.ws.connections import DIRECT_SEND_TEXT, DIRECT_WRITER, DirectWriter
from wsproject import versions
from wsproject.primitives import Flag, ReceiveQueue, second_timers

logger = logging.getLogger(__name__)
# websockets' own handshake log lines ("connection rejected (400 Bad Request)", no address): the
# refusal is logged here instead, once, with the address and the reason (_refused).
quiet_websockets_logger = logging.getLogger(f"{__name__}.websockets")
quiet_websockets_logger.setLevel(logging.WARNING)

# The versions tests/test_internals.py ran against: requirements.txt's pins.
TESTED = {"uvicorn": "0.54.0", "websockets": "17.4"}

# How long a stalled client's close frame may wait to be read before the connection is aborted.
STALLED_CLOSE_SECONDS = 2.0
# Once the server has sent its close frame, what the client may still send (read and dropped unparsed:
# a 4 MiB frame being refused with 1009 is still arriving) and for how long, before it is aborted.
CLOSING_BYTES = 8 * 1024 * 1024
# What is parsed of a client's input per turn of the event loop. One read can hold 256 KiB: of tiny
# frames, that is thousands, and parsing them at once would hold every other connection back for
# hundreds of milliseconds. Input read but not parsed yet is kept up to UNPARSED_BYTES past one read;
# above that, reading pauses until it is parsed.
PARSE_BYTES = 4 * 1024
UNPARSED_BYTES = 64 * 1024
CLOSING_SECONDS = 5.0
# Closes the WebSocket layer decides itself, and the error frame's code sent before each.
PROTOCOL_ERRORS = {1009: "frame_too_big", 1007: "invalid_utf8", 1002: "protocol_error", 1013: "stalled"}


def compression_enabled() -> bool:
    """``WS_COMPRESSION``: negotiate permessage-deflate with clients that offer it (off by default)."""
    return bool(settings.WS_COMPRESSION)


# Settings under which one serialized frame fits every connection: no extension, or permessage-deflate
# without context takeover on the server's side (each message compressed on its own) and these
# compression settings. None: the connection's frames depend on what it was sent before.
FrameSetting = tuple[object, ...] | None
COMPRESS_SETTINGS = {"memLevel": 5}


def frame_setting(extensions: list[Extension]) -> FrameSetting:
    """The setting a connection's outgoing frames are made under, or None if they cannot be shared."""
    if not extensions:
        return ()
    if len(extensions) == 1 and isinstance(extensions[0], PerMessageDeflate):
        deflate = extensions[0]
        if deflate.local_no_context_takeover and deflate.compress_settings == COMPRESS_SETTINGS:
            return ("permessage-deflate", deflate.local_max_window_bits)
    return None


class PreparedFrames:
    """The wire bytes of the message being fanned out, made once per ``FrameSetting``, not per client.

    The layer hands every local connection the same text object in one synchronous loop, so the bytes
    of the last text seen are all there is to keep (Go's gorilla/websocket calls this a
    ``PreparedMessage``). Server frames are not masked, so the bytes are the same for every client.
    """

    __slots__ = ("frames", "text")

    def __init__(self) -> None:
        self.text: str | None = None
        self.frames: dict[FrameSetting, bytes] = {}

    def frame(self, text: str, setting: FrameSetting, extensions: list[Extension]) -> bytes:
        if text is not self.text:
            self.text = text
            self.frames = {}
        frame = self.frames.get(setting)
        if frame is None:
            frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=extensions)
            self.frames[setting] = frame
        return frame


prepared = PreparedFrames()  # one event loop per server process: one message fanned out at a time


def plain_frame(text: str) -> bytes:
    """A text frame's bytes on a socket with no extension: one function for all of them."""
    return prepared.frame(text, (), [])


def refusal() -> str | None:
    """Called by the production server before it starts: why it must not (untested versions), or None."""
    return versions.refusal(TESTED, "wsproject/uvicorn_ws.py")


# Every attribute uvicorn's WebSocket protocol sets on itself. They are more than CPython (3.11) keeps
# inline in an object, 30: past them, each connection's instance dict becomes a hash table of its own,
# 1.6 KB on every idle connection. As slots of a subclass they take 8 bytes each, and the instance dict
# keeps only BoundedWebSocketProtocol's own attributes. A name uvicorn drops costs 8 idle bytes; one it
# adds lands in the dict again (tests/test_internals.py lists them).
UVICORN_WS_ATTRIBUTES = (
    "config", "app", "loop", "logger", "root_path", "asgi_version", "app_state", "connections",
    "tasks", "default_headers", "transport", "server", "client", "scheme", "queue",
    "handshake_initiated", "handshake_complete", "close_sent", "disconnected", "close_timer",
    "close_timeout", "initial_response", "conn", "read_paused", "writable", "ping_interval",
    "ping_timeout", "ping_timer", "pong_timer", "pending_ping_payload", "ping_sent_at",
    "last_ping_rtt", "frames", "curr_msg_data_type", "request", "response", "scope",
)  # fmt: skip


class SlottedWebSocketsSansIOProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with its attributes in slots: nothing else changes."""

    __slots__ = UVICORN_WS_ATTRIBUTES


class BoundedWebSocketProtocol(SlottedWebSocketsSansIOProtocol):
    """websockets' sans-I/O protocol that drops a client which stopped reading its socket.

    While a client reads slowly, sends wait (uvicorn pauses writers above the transport's high-water
    mark), the consumer's channel queue fills, and the layer closes it with 1013. While the app is
    behind, reading pauses (uvicorn's own flow control), so what a client sends cannot pile up either.
    A client that stops reading altogether is closed with 1013 once its socket has stayed unwritable
    for ``WS_STALL_SECONDS`` (logged and counted), and aborted if it does not read that close frame.

    It also holds less per connection (docs/benchmarks.md: What an idle connection holds), offers the
    layer a synchronous send (``direct_send_text``), and closes with 1001 (going away) when the server
    shuts down.
    """

    @property
    def stall_seconds(self) -> float:
        """``WS_STALL_SECONDS`` (Django's settings: uvicorn loaded the app, and them, before serving)."""
        return float(settings.WS_STALL_SECONDS)

    @property
    def shutdown_seconds(self) -> float:
        """``WS_SHUTDOWN_SECONDS``: on shutdown, how long a client may take to answer the 1001 close."""
        return float(settings.WS_SHUTDOWN_SECONDS)

    # The connections of the server whose shutdown was last logged (see _log_shutdown).
    _shutdown_logged_for: ClassVar[Set[Any] | None] = None

    __slots__ = (
        "_discarded",
        "_paused_to_parse",
        "_stall_timer",
        "_unparsed",
        "_writer_lost",
        "frame_setting",
        "lingering",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_setting: FrameSetting = None  # known once the handshake is done
        self.lingering = False  # the close frame is sent: input is counted and dropped (see _linger)
        self._discarded = 0
        self._unparsed: bytearray | None = None  # read, not parsed yet (PARSE_BYTES per loop turn)
        self._writer_lost: Callable[[], None] | None = None  # see direct_writer
        self._paused_to_parse = False
        self._stall_timer: asyncio.TimerHandle | None = None
        # Lighter stand-ins for asyncio's Queue and Event (wsproject/primitives.py).
        self.queue = ReceiveQueue()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()
        if compression_enabled():
            # uvicorn's own permessage-deflate keeps a compression context per connection, so each
            # message would be compressed once per client. Without context takeover on the server's
            # side every message is compressed on its own, once per process (PreparedFrames).
            deflate = ServerPerMessageDeflateFactory(
                server_no_context_takeover=True,
                client_max_window_bits=12,
                compress_settings=COMPRESS_SETTINGS,
            )
            self.conn = ServerProtocol(extensions=[deflate], max_size=self.config.ws_max_size)
        self.conn.logger = quiet_websockets_logger

    def receive(self) -> asyncio.Future[Any]:  # type: ignore[override]
        """The app's ``receive``: uvicorn's, returning the queue's future rather than awaiting it in a
        coroutine, so that an idle connection's app waits with no suspended frame of uvicorn's. Reading
        (paused at each message queued) resumes when the app asks for more and nothing is left queued.
        """
        message = cast(ReceiveQueue[Any], self.queue).get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self.transport.resume_reading()
        return message

    # ------------------------------------------------------------ the handshake

    def handle_connect(self, event: Request) -> None:
        """Called with the parsed upgrade request: websockets checks it, the app decides."""
        super().handle_connect(event)
        if self.response.status_code != 101:  # refused by websockets: uvicorn answered and closed
            self._refused(self.response.status_code)
            return
        extensions: dict[str, Any] = self.scope["extensions"]
        extensions[DIRECT_SEND_TEXT] = self.direct_send_text
        extensions[DIRECT_WRITER] = self.direct_writer

    def start_keepalive(self) -> None:
        """Called once, when the handshake's response has been sent."""
        # The parsed request and response, headers and all, are not needed after this point, but
        # uvicorn keeps them for the connection's life, and so does websockets' parser (a local
        # variable of its generator): emptying the headers frees them for every idle connection.
        # So is the ASGI scope's list of headers (shared with the URL router's copy of the scope):
        # the app has read them (origin, cookie, subprotocols) before it accepted.
        self.request.headers.clear()
        self.request = self.response = None  # type: ignore[assignment]
        headers = self.scope["headers"]
        if isinstance(headers, list):  # uvicorn's is; a list shared by every copy of the scope
            headers.clear()
        self.frame_setting = frame_setting(self.conn.extensions)
        super().start_keepalive()

    def schedule_ping(self) -> None:
        """uvicorn's, on the loop's ``SecondTimers`` (``wsproject/primitives.py``): the next keepalive
        ping, due in ``ping_interval`` seconds, needs no loop timer of its own on every idle socket."""
        assert self.ping_interval is not None
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        self.ping_timer = second_timers().call_later(delay, self.send_keepalive_ping)  # type: ignore[assignment]

    def is_open(self) -> bool:
        """True from the handshake's response until either side starts closing: frames may be sent."""
        return (
            self.handshake_complete
            and not self.disconnected
            and not self.close_sent
            and self.initial_response is None
            and not self.transport.is_closing()
        )

    def direct_send_text(self, text: str) -> bool:
        """Write a text frame now if the connection is open and writable; else False (use send()).

        What ``send({"type": "websocket.send", "text": ...})`` does, without a coroutine, so that the
        channel layer can fan a message out to thousands of sockets in one synchronous loop: the
        server's hot path, once per connection for every message.
        """
        setting = self.frame_setting
        if setting is None:  # during the handshake, or frames of this connection cannot be shared
            return self._direct_send_own_frame(text)
        if not self._takes_frames_now():
            return False
        frame = prepared.frames.get(setting) if text is prepared.text else None
        self.transport.write(frame or prepared.frame(text, setting, self.conn.extensions))
        return True

    def _takes_frames_now(self) -> bool:
        """Once the handshake is done (``frame_setting`` is set when its response is sent): what
        ``is_open()`` and ``conn.send_text()`` check beyond that, and writable. uvicorn never sends
        fragments (continuation frames)."""
        return not (
            self.disconnected
            or self.close_sent
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        )

    def direct_writer(self, on_lost: Callable[[], None]) -> DirectWriter | None:
        """The transport's write, for a caller that writes one prepared frame to many sockets, if this
        one takes frames now and shares them (``DIRECT_WRITER``); else None.

        ``on_lost()`` is called once, synchronously, the moment the socket stops taking frames: its
        buffer is full (``pause_writing``), a close frame is sent or received, the connection is lost.
        A later call replaces it.
        """
        setting = self.frame_setting
        if setting is None or not self._takes_frames_now():
            return None
        self._writer_lost = on_lost
        return DirectWriter(self.transport.write, setting, plain_frame if setting == () else self._frame)

    def _frame(self, text: str) -> bytes:
        return prepared.frame(text, self.frame_setting, self.conn.extensions)

    def _stop_direct_writes(self) -> None:
        """Called when the socket stops taking frames: tell whoever writes to it directly, once."""
        lost, self._writer_lost = self._writer_lost, None
        if lost is not None:
            lost()

    def _direct_send_own_frame(self, text: str) -> bool:
        """``direct_send_text`` for a connection whose frames cannot be shared (or not yet open)."""
        if not (self.is_open() and self.writable.is_set()):
            return False
        try:
            self.conn.send_text(text.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    # ------------------------------------------------------------ a client that stopped reading

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stop_direct_writes()
        if self._stall_timer is None:
            self._stall_timer = asyncio.get_running_loop().call_later(self.stall_seconds, self._drop)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_stall_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_direct_writes()
        self._cancel_stall_timer()
        super().connection_lost(exc)

    def keepalive_timeout(self) -> None:
        """Called by uvicorn when the client did not answer a ping in time: it closes the socket."""
        self._stop_direct_writes()
        super().keepalive_timeout()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _drop(self) -> None:
        """Called when the socket has been unwritable for ``stall_seconds``: close it with 1013.

        The close frame waits behind what the client has not read; if it does not read that either
        within ``STALLED_CLOSE_SECONDS``, the connection is aborted and its buffers freed.
        """
        self._stall_timer = None
        logger.warning(
            "Dropping %s: it has not read its socket for %.0f s (1013)", self.client, self.stall_seconds
        )
        metrics.inc("ws_dropped_total", "stalled_client")
        metrics.inc("ws_closed_total", "1013")
        if self.conn.state is State.OPEN:
            self.conn.send_close(1013, "stalled: not reading")
            self.handle_parser_exception()  # tells the app, writes the close frame, closes when written
        self.loop.call_later(STALLED_CLOSE_SECONDS, self.transport.abort)

    # ------------------------------------------------------------ a connection being closed

    def data_received(self, data: bytes) -> None:
        """Called with what the client sent: parsed ``PARSE_BYTES`` per loop turn, unless the server
        has sent its close frame.

        From then on nothing the client sends is parsed or dispatched (a flood of tiny frames would
        hold the event loop for seconds): it is counted and dropped until the client has read the
        close frame and closed its side, or ``CLOSING_BYTES`` or ``CLOSING_SECONDS`` run out.
        """
        if self.lingering:
            self._discarded += len(data)
            if self._discarded > CLOSING_BYTES:
                self._abort_closing("closing_bytes")
            return
        if self._unparsed is not None:  # an earlier read is still being parsed: this comes after it
            self._unparsed += data
            if len(self._unparsed) > UNPARSED_BYTES:  # again, if uvicorn resumed reading meanwhile
                self._paused_to_parse = True
                self.transport.pause_reading()
            return
        if self.handshake_complete and len(data) > PARSE_BYTES:
            self._unparsed = bytearray(data[PARSE_BYTES:])
            self.loop.call_soon(self._parse_unparsed)
            data = data[:PARSE_BYTES]
        self._parse(data)

    def _parse_unparsed(self) -> None:
        """Called once per loop turn while input waits to be parsed: the next ``PARSE_BYTES`` of it."""
        unparsed = self._unparsed
        if unparsed is None:
            return
        if self.lingering or self.transport.is_closing():
            self._unparsed = None  # nothing more is parsed (data_received counts what comes next)
            return
        chunk = bytes(unparsed[:PARSE_BYTES])
        del unparsed[:PARSE_BYTES]  # from the front of a bytearray: no copy of the rest
        if unparsed:
            self.loop.call_soon(self._parse_unparsed)
        else:
            self._unparsed = None
            if self._paused_to_parse:
                self._paused_to_parse = False
                if not self.read_paused:  # else uvicorn resumes once the app has taken what it queued
                    self.transport.resume_reading()
        self._parse(chunk)

    def _parse(self, data: bytes) -> None:
        super().data_received(data)
        if self.handshake_complete and self.conn.state is not State.OPEN:  # a close frame came
            self._stop_direct_writes()
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            # A request websockets could not even parse (a header over its limits): uvicorn
            # would leave its answer unsent and the connection open.
            answer = b"".join(self.conn.data_to_send())  # b"HTTP/1.1 431 ..."
            self.transport.write(answer)
            self.transport.close()
            self._refused(int(answer[9:12]) if answer[9:12].isdigit() else 400)

    def _refused(self, status: int) -> None:
        """Called when a handshake was refused before the app saw it: one line and a count, no traceback."""
        exc = self.conn.handshake_exc
        reason = type(exc).__name__ if exc is not None else "refused"
        detail = " ".join(str(exc).split())[:200] if exc is not None else ""
        address = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        logger.warning("Refused a WebSocket handshake from %s (%d): %s", address, status, detail or reason)
        metrics.inc("ws_handshakes_refused_total", reason)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_sent and self.handshake_complete:
            self._stop_direct_writes()
            self._linger()

    def handle_parser_exception(self) -> None:
        """Called when the connection fails (a frame too big, a protocol error, invalid UTF-8, a stall).

        What uvicorn's does (tell the app, write the close frame), without closing the socket at
        once: the client may still be sending, and a socket closed with unread input answers with a
        reset that can destroy the close frame before the client reads it (1006 instead of 1009).
        """
        assert self.conn.close_sent is not None
        self._stop_direct_writes()
        code, reason = self.conn.close_sent.code, self.conn.close_sent.reason
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if code in PROTOCOL_ERRORS and self.handshake_complete:
            # As the consumer's own refusals do: an error frame saying why, just before the close.
            error = error_frame(PROTOCOL_ERRORS[code], reason)
            self.transport.write(Frame(Opcode.TEXT, error.encode()).serialize(mask=False, extensions=[]))
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._linger()

    def _linger(self) -> None:
        """Called once the close frame is written: end the connection so that the client hears it.

        Frames queued for the app are dropped (one it was already handed, as it waited, still reaches
        it); the write side is shut once the close frame
        is flushed (the client sees it, then the end of the stream, and closes its side: no input is
        left unread, so no reset); reading goes on, unparsed, within ``CLOSING_BYTES`` and
        ``CLOSING_SECONDS`` (or the shorter ``close_timeout`` of a shutdown), then the connection is
        aborted.
        """
        if self.lingering or self.transport.is_closing():
            return
        self.lingering = True
        cast(ReceiveQueue[dict[str, Any]], self.queue).drop(
            lambda message: message["type"] == "websocket.receive"
        )
        if self.close_timer is not None:
            self.close_timer.cancel()
        seconds = min(self.close_timeout, CLOSING_SECONDS)
        self.close_timer = self.loop.call_later(seconds, self._abort_closing, "closing_timeout")
        if self.transport.can_write_eof():  # not under TLS: there, the client's end or the timer ends it
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def _abort_closing(self, reason: str) -> None:
        """Called when a client being closed sent more than ``CLOSING_BYTES`` or took too long."""
        self.close_timer = None
        if self.transport.is_closing():
            return  # already on its way out (connection_lost has not run yet)
        logger.info(
            "Aborting %s: %s after its close frame (%d bytes dropped)", self.client, reason, self._discarded
        )
        metrics.inc("ws_aborted_total", reason)
        self.transport.abort()

    # ------------------------------------------------------------ client frames

    def send_receive_event_to_app(self) -> None:
        """Pass a complete message to the app (and pause reading until it is taken, as uvicorn does).

        Invalid UTF-8 in a text message closes with 1007 and one plain log line; uvicorn's own
        version logs a traceback for what is a client's mistake. Everything else is uvicorn's.
        """
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                metrics.inc("ws_dropped_total", "invalid_utf8")
                if self.conn.state is not State.OPEN:
                    return  # already closing: nothing more to say to this client
                logger.warning("Closing %s: invalid UTF-8 in a text frame (1007)", self.client)
                metrics.inc("ws_closed_total", "1007")
                self.conn.send_close(1007, "invalid UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    # ------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Called by uvicorn's server on every connection when it shuts down, once it stopped accepting.

        uvicorn's own closes an open WebSocket with 1012 (service restart) and drops the TCP connection
        at once. An open one is closed here instead as if the app had sent ``websocket.close`` with
        1001 (going away), so that its page reconnects to another replica: the app is told, and the
        connection reads on until the client answers or ``WS_SHUTDOWN_SECONDS`` pass; uvicorn's server
        waits for that (up to its ``timeout_graceful_shutdown``). The rest (a handshake in progress, a
        socket that is closing, or one the client stopped reading) get uvicorn's own.
        """
        if not (self.is_open() and self.writable.is_set()):
            self._stop_direct_writes()
            super().shutdown()
            return
        self._log_shutdown()
        self.close_timeout = self.shutdown_seconds
        task = self.loop.create_task(self._go_away())
        self.tasks.add(task)
        task.add_done_callback(self.on_task_complete)

    async def _go_away(self) -> None:
        if not self.is_open():
            return  # the app or the client closed first
        with contextlib.suppress(ClientDisconnected):
            await self.send({"type": "websocket.close", "code": CLOSE_GOING_AWAY, "reason": "going away"})

    def _log_shutdown(self) -> None:
        """Say how many WebSockets are closed with 1001: once per server, not once per connection."""
        if BoundedWebSocketProtocol._shutdown_logged_for is self.connections:
            return
        BoundedWebSocketProtocol._shutdown_logged_for = self.connections
        closing = sum(
            1
            for c in self.connections
            if isinstance(c, BoundedWebSocketProtocol) and c.is_open() and c.writable.is_set()
        )
        logger.info("Closing %d WebSocket connections with %d", closing, CLOSE_GOING_AWAY)


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, with a deadline for each request's headers (a slowloris defence):
    ``HTTP_HEADERS_TIMEOUT`` (uvicorn has none: a client trickling a header a minute would hold its
    socket for ever).

    The deadline runs from the connection's start, and again from each later request's first byte,
    until its headers are complete (a WebSocket upgrade included); past it the connection is closed
    with a 408 and one log line. Between requests uvicorn's own keep-alive timeout applies.

    A client that stops reading a response (an event stream, ``echo.sse``) is dropped like a WebSocket
    one: while its socket is unwritable the app's sends wait (uvicorn's flow control, so the stream's
    layer queue fills and is dropped, not memory); once it has stayed unwritable for
    ``WS_STALL_SECONDS`` the connection is aborted, which the app hears as ``http.disconnect``.
    """

    headers_deadline: asyncio.TimerHandle | None = None
    _stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.headers_deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._cancel_stall_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(float(settings.WS_STALL_SECONDS), self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_stall_timer()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        """Called when the socket has been unwritable for ``WS_STALL_SECONDS``: abort it, buffers and all."""
        self._stall_timer = None
        address = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        logger.warning(
            "Dropping %s: it has not read its HTTP response for %.0f s", address, settings.WS_STALL_SECONDS
        )
        metrics.inc("http_aborted_total", "stalled_client")
        self.transport.abort()

    def shutdown(self) -> None:
        """Called by uvicorn's server on SIGTERM. A response still streaming (an event stream) never
        completes by itself: uvicorn would wait its graceful timeout, then cancel the app with a
        traceback. It is ended now instead: the app hears ``http.disconnect`` and returns, and the
        client (``EventSource``) reconnects, to another replica, with ``Last-Event-ID``."""
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.close()
            return
        super().shutdown()

    def _arm(self) -> None:
        self.headers_deadline = self.loop.call_later(settings.HTTP_HEADERS_TIMEOUT, self._headers_too_slow)

    def _disarm(self) -> None:
        if self.headers_deadline is not None:
            self.headers_deadline.cancel()
            self.headers_deadline = None

    def _headers_too_slow(self) -> None:
        self.headers_deadline = None
        if self.transport.is_closing():
            return
        address = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        logger.warning(
            "Closed a connection from %s: no complete request headers within %gs",
            address,
            settings.HTTP_HEADERS_TIMEOUT,
        )
        metrics.inc("http_refused_total", "headers_timeout")
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        self.transport.close()


async def _nothing(scope: Any, receive: Any, send: Any) -> None:
    """The application of ``FlatProxyHeadersMiddleware``'s rewriter: done at once."""


class FlatProxyHeadersMiddleware:
    """uvicorn's proxy-headers middleware (the client's address and scheme from ``X-Forwarded-For`` and
    ``X-Forwarded-Proto``, from trusted proxies only), returning the application's coroutine rather
    than awaiting it in a coroutine of its own: one suspended frame fewer for every connection's life.
    uvicorn's own is off (``proxy_headers=False``); the server wraps the application in this one
    (``wsproject.server.application``).

    The rewriting is uvicorn's (``rewriter``), run to its end: its ``__call__`` changes the scope in
    place, then awaits its application, here one that returns at once. Were a uvicorn to wait for
    anything before that, the rewrite would not end in one step, and every connection would fail
    loudly (``tests/test_internals.py`` checks that it ends).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], trusted_hosts: list[str] | str) -> None:
        self.app = app
        self.rewriter = ProxyHeadersMiddleware(_nothing, trusted_hosts)

    @markcoroutinefunction
    def __call__(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        rewriting = self.rewriter(scope, receive, send)
        try:
            rewriting.send(None)
        except StopIteration:
            return self.app(scope, receive, send)
        rewriting.close()
        raise RuntimeError("uvicorn's ProxyHeadersMiddleware waited before calling its application")
