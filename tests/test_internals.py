"""Contract tests: what wsproject/uvicorn_ws.py and wsproject/daphne_compat.py rely on in other packages.

One test per internal method or attribute the subclasses override or use, so that an upgrade which
renames or changes one fails here, naming it, instead of in production. uvicorn's protocol runs for
real on a fake transport, with websockets' own sans-I/O client at the other end. Also here: the
startup refusal of untested versions, and daphne, Twisted and autobahn kept out of production.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from django.conf import settings
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

import wsproject.asgi
from echo.ws.connections import DIRECT_SEND_TEXT
from tests.helpers.clients import next_echo
from tests.helpers.event_loop import loop_turns
from tests.helpers.processes import ROOT, start_server, stop, timeout
from tests.helpers.source import body_statements
from wsproject import server, uvicorn_ws, versions
from wsproject.primitives import Flag, ReceiveQueue, Timer
from wsproject.uvicorn_ws import BoundedWebSocketProtocol

FORBIDDEN_IN_PRODUCTION = ("daphne", "twisted", "autobahn")
UVICORN_PROTOCOL_SOURCE = inspect.getsource(WebSocketsSansIOProtocol)


class FakeTransport(asyncio.Transport):
    """What uvicorn's protocol calls on its transport, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = self.aborted = self.eof_written = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


class App:
    """An ASGI app that accepts and records what it receives; tests send through its ``send``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.send: Any = None
        self.scope_headers_seen = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.send = send
        self.scope_headers_seen = bool(scope["headers"])
        self.received.append(await receive())
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                return

    def types(self) -> list[str]:
        return [m["type"] for m in self.received]


class Peer:
    """uvicorn building our protocol on a fake transport, and a websockets client speaking to it."""

    def __init__(
        self,
        app: App,
        protocol_class: type[WebSocketsSansIOProtocol] = BoundedWebSocketProtocol,
        server_state: ServerState | None = None,
    ) -> None:
        self.app = app
        config = uvicorn.Config(
            app,
            ws=protocol_class,
            lifespan="off",
            log_config=None,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
        )
        config.load()
        self.server_state = server_state or ServerState()
        self.protocol: Any = config.ws_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server_state, app_state={}, _loop=asyncio.get_running_loop()
        )
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)
        self.client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/ws/echo/"))

    def to_server(self) -> None:
        self.protocol.data_received(b"".join(self.client.data_to_send()))

    def from_server(self) -> list[Any]:
        self.client.receive_data(self.transport.take())
        return self.client.events_received()

    def frames(self) -> list[Frame]:
        return [event for event in self.from_server() if isinstance(event, Frame)]

    async def open(self) -> None:
        self.client.send_request(self.client.connect())
        self.to_server()
        await loop_turns()
        events = self.from_server()
        assert isinstance(events[0], Response) and events[0].status_code == 101, events

    async def end(self) -> None:
        if not self.protocol.disconnected:
            self.protocol.connection_lost(None)
        await loop_turns()


@pytest.fixture
async def peers() -> Any:
    """Makes Peers; ends each one's connection (and so its app) after the test."""
    made: list[Peer] = []

    def make(app: App | None = None, **kwargs: Any) -> Peer:
        peer = Peer(app or App(), **kwargs)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        await peer.end()


def closes(frames: list[Frame]) -> list[tuple[int, str]]:
    """(code, reason) of the close frames among ``frames``."""
    return [(c.code, c.reason) for c in (Close.parse(f.data) for f in frames if f.opcode is Opcode.CLOSE)]


# ---------------------------------------------------------------- uvicorn: how it takes our protocol


def test_uvicorn_takes_the_protocol_class_by_import_string_with_the_servers_options() -> None:
    config = uvicorn.Config(server.APPLICATION, **server.options("127.0.0.1", 0, 1))
    config.load()
    assert config.ws_protocol_class is BoundedWebSocketProtocol, "uvicorn.Config(ws=...) no longer imports it"


def test_uvicorn_loads_the_application_behind_our_proxy_headers_middleware_only() -> None:
    config = uvicorn.Config(server.APPLICATION, **server.options("127.0.0.1", 0, 1))
    config.load()
    assert isinstance(config.loaded_app, uvicorn_ws.FlatProxyHeadersMiddleware)
    assert config.interface == "asgi3", "uvicorn no longer sees the flat __call__ as a coroutine function"
    assert config.loaded_app.app is wsproject.asgi.application  # uvicorn's own middleware is off


@pytest.mark.parametrize(
    ("client", "headers", "rewritten"),
    [
        # A trusted proxy (FORWARDED_ALLOW_IPS) says who the client is and how it connected.
        (("127.0.0.1", 5000), [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")],
         {"client": ("203.0.113.7", 0), "scheme": "wss"}),
        # Anyone else is not believed.
        (("198.51.100.1", 5000), [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")],
         {"client": ("198.51.100.1", 5000), "scheme": "ws"}),
        # Nothing forwarded: nothing changes.
        (("127.0.0.1", 5000), [], {"client": ("127.0.0.1", 5000), "scheme": "ws"}),
    ],
)  # fmt: skip
def test_uvicorns_proxy_headers_rewrite_the_scope_in_place_in_one_step_as_ours_returns_the_app(
    client: tuple[str, int], headers: list[tuple[bytes, bytes]], rewritten: dict[str, Any]
) -> None:
    """FlatProxyHeadersMiddleware runs uvicorn's __call__ to its end on the scope: uvicorn's must
    change the scope in place and wait for nothing before its application."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        pass

    def scope() -> dict[str, Any]:
        return {"type": "websocket", "scheme": "ws", "client": client, "headers": headers}

    theirs = scope()
    step = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")(theirs, None, None)
    with pytest.raises(StopIteration):
        step.send(None)  # ended in one step
    assert {key: theirs[key] for key in rewritten} == rewritten

    ours = scope()
    returned = uvicorn_ws.FlatProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")(ours, None, None)
    assert returned.cr_code is app.__code__  # the application's own coroutine, not a wrapper's
    returned.close()
    assert ours == theirs


def test_uvicorn_server_closes_connections_through_their_shutdown_then_waits_for_them() -> None:
    """Our 1001 close lives in the protocol's shutdown(): uvicorn's server must call it and then wait."""
    shutdown = inspect.getsource(uvicorn.Server.shutdown)
    assert re.search(
        r"for connection in list\(self\.server_state\.connections\):\s+connection\.shutdown\(\)", shutdown
    ), "uvicorn.Server.shutdown no longer calls shutdown() on each connection"
    waiting = inspect.getsource(uvicorn.Server._wait_tasks_to_complete)
    assert "while self.server_state.connections" in waiting, (
        "uvicorn no longer waits for connections to close"
    )
    assert "timeout_graceful_shutdown" in shutdown


# ---------------------------------------------------------------- uvicorn: attributes replaced or read


def test_uvicorns_init_makes_queue_and_writable_which_ours_replaces() -> None:
    init = inspect.getsource(WebSocketsSansIOProtocol.__init__)
    assert "self.queue: asyncio.Queue" in init and "self.writable = asyncio.Event()" in init, (
        "uvicorn's protocol no longer makes the queue and writable event BoundedWebSocketProtocol replaces"
    )


@pytest.mark.parametrize(("attribute", "primitive"), [("queue", ReceiveQueue), ("writable", Flag)])
def test_uvicorn_uses_only_methods_our_primitives_have(attribute: str, primitive: type) -> None:
    used = set(re.findall(rf"self\.{attribute}\.(\w+)", UVICORN_PROTOCOL_SOURCE))
    assert used, f"uvicorn's protocol no longer uses self.{attribute}"
    missing = {name for name in used if not hasattr(primitive, name)}
    assert not missing, (
        f"uvicorn's protocol now calls self.{attribute}.{missing}, which {primitive.__name__} lacks"
    )


# What a fresh connection's attribute must be, for each one our protocol reads or sets.
ATTRIBUTES: dict[str, Any] = {
    "queue": lambda p, peer: isinstance(p.queue, ReceiveQueue),
    "writable": lambda p, peer: isinstance(p.writable, Flag) and p.writable.is_set(),
    "conn": lambda p, peer: isinstance(p.conn, ServerProtocol),
    "transport": lambda p, peer: p.transport is peer.transport,
    "client": lambda p, peer: p.client == ("127.0.0.1", 50000),
    "loop": lambda p, peer: p.loop is asyncio.get_running_loop(),
    "connections": lambda p, peer: p.connections is peer.server_state.connections and p in p.connections,
    "tasks": lambda p, peer: p.tasks is peer.server_state.tasks,
    "on_task_complete": lambda p, peer: callable(p.on_task_complete),
    "handshake_complete": lambda p, peer: p.handshake_complete is False,
    "close_sent": lambda p, peer: p.close_sent is False,
    "disconnected": lambda p, peer: p.disconnected is False,
    "initial_response": lambda p, peer: p.initial_response is None,
    "read_paused": lambda p, peer: p.read_paused is False,
    "close_timeout": lambda p, peer: isinstance(p.close_timeout, float),
    "close_timer": lambda p, peer: p.close_timer is None,
    "curr_msg_data_type": lambda p, peer: p.curr_msg_data_type in ("text", "bytes"),
    "frames": lambda p, peer: p.frames == [],
}


@pytest.mark.parametrize("attribute", ATTRIBUTES)
async def test_an_attribute_our_protocol_relies_on_is_there_with_its_meaning(
    peers: Any, attribute: str
) -> None:
    assert hasattr(peers(protocol_class=WebSocketsSansIOProtocol).protocol, attribute), (
        f"uvicorn's protocol no longer has {attribute}"
    )
    peer = peers()
    assert ATTRIBUTES[attribute](peer.protocol, peer), (
        f"uvicorn's protocol sets {attribute} to something else"
    )


async def test_handshake_complete_and_disconnected_follow_the_connection(peers: Any) -> None:
    peer = peers()
    await peer.open()
    assert peer.protocol.handshake_complete and peer.protocol.is_open()
    peer.protocol.connection_lost(None)
    assert peer.protocol.disconnected and not peer.protocol.is_open()


async def test_every_attribute_uvicorns_protocol_sets_is_one_of_our_slots(peers: Any) -> None:
    """Past 30 attributes, an object's instance dict grows a table of its own on every connection."""
    uvicorns = peers(protocol_class=WebSocketsSansIOProtocol)
    await uvicorns.open()
    unslotted = set(vars(uvicorns.protocol)) - set(uvicorn_ws.UVICORN_WS_ATTRIBUTES)
    assert not unslotted, f"uvicorn's protocol now sets {unslotted}: add them to UVICORN_WS_ATTRIBUTES"
    ours = peers()
    await ours.open()
    assert not vars(ours.protocol), "BoundedWebSocketProtocol's own attributes belong in its __slots__"


# ---------------------------------------------------------------- uvicorn: methods overridden


async def test_handle_connect_builds_a_scope_whose_extensions_get_direct_send(peers: Any) -> None:
    peer = peers()
    await peer.open()
    extensions = peer.protocol.scope["extensions"]
    assert "websocket.http.response" in extensions, "uvicorn's own extensions are gone from the scope"
    assert extensions[DIRECT_SEND_TEXT] == peer.protocol.direct_send_text


async def test_start_keepalive_is_called_once_after_the_handshake_response_is_written(peers: Any) -> None:
    """Ours frees the handshake's request and response there: uvicorn must not read them afterwards."""
    calls: list[tuple[bytes, bool, bool]] = []

    class Recording(BoundedWebSocketProtocol):
        def start_keepalive(self) -> None:
            calls.append((bytes(self.transport.written), self.request is not None, self.response is not None))
            super().start_keepalive()

    peer = peers(protocol_class=Recording)
    await peer.open()
    assert len(calls) == 1, "start_keepalive is no longer called exactly once per connection"
    written, had_request, had_response = calls[0]
    assert written.startswith(b"HTTP/1.1 101 "), "start_keepalive is called before the response is written"
    assert had_request and had_response, "uvicorn no longer keeps the handshake as request / response"
    protocol = peer.protocol
    assert protocol.request is None and protocol.response is None
    assert protocol.scope["headers"] == [], "the scope's headers list is no longer one list to empty"
    assert peer.app.scope_headers_seen, "the app did not see the headers before it accepted"
    assert protocol.ping_timer is not None, "uvicorn's start_keepalive no longer schedules pings"
    # A whole conversation afterwards, pings and a close included, never touches them.
    peer.client.send_text(b"hello")
    peer.client.send_ping(b"p")
    peer.to_server()
    await loop_turns()
    assert [f.opcode for f in peer.frames()] == [Opcode.PONG]
    await peer.app.send({"type": "websocket.send", "text": "out"})
    protocol.send_keepalive_ping()
    peer.client.send_close(1000)
    peer.to_server()
    await loop_turns()
    assert peer.app.received[1] == {"type": "websocket.receive", "text": "hello"}
    assert peer.app.received[-1]["type"] == "websocket.disconnect"


def test_uvicorn_schedules_the_next_ping_in_schedule_ping_and_only_cancels_the_handle() -> None:
    """Ours puts it on ``SecondTimers``, whose ``Timer`` has the one method uvicorn calls on it."""
    body = inspect.getsource(WebSocketsSansIOProtocol.schedule_ping)
    assert "self.ping_timer = self.loop.call_later(delay, self.send_keepalive_ping)" in body
    assert "delay = max(0.0, self.ping_interval - self.last_ping_rtt)" in body
    used = set(re.findall(r"self\.ping_timer\.(\w+)", UVICORN_PROTOCOL_SOURCE))
    assert used == {"cancel"}, f"uvicorn now calls ping_timer.{used - {'cancel'}}, which Timer lacks"


async def test_keepalive_pings_go_out_on_the_loops_second_timers_and_stop_with_the_socket(
    peers: Any,
) -> None:
    peer = peers()
    await peer.open()
    protocol = peer.protocol
    assert isinstance(protocol.ping_timer, Timer), "the first ping is not on SecondTimers"
    protocol.ping_interval = 0.01
    protocol.ping_timer.cancel()
    protocol.schedule_ping()
    pinged = asyncio.get_running_loop().create_future()
    send_ping = protocol.conn.send_ping

    def recording(data: bytes) -> None:
        send_ping(data)
        pinged.set_result(data)

    protocol.conn.send_ping = recording
    await asyncio.wait_for(pinged, 5)
    assert [f.opcode for f in peer.frames()] == [Opcode.PING]
    peer.client.send_pong(pinged.result())
    peer.to_server()
    await loop_turns()
    assert isinstance(protocol.ping_timer, Timer), "the answer did not schedule the next ping"
    timer = protocol.ping_timer
    protocol.connection_lost(None)
    assert timer.callback is None, "a lost connection keeps its ping scheduled"


async def test_direct_send_text_writes_a_frame_only_while_open_and_writable(peers: Any) -> None:
    peer = peers()
    protocol = peer.protocol
    assert protocol.direct_send_text("early") is False  # no handshake yet
    await peer.open()
    assert protocol.direct_send_text("now") is True
    assert [(f.opcode, f.data) for f in peer.frames()] == [(Opcode.TEXT, b"now")]
    protocol.pause_writing()
    assert protocol.direct_send_text("paused") is False
    protocol.resume_writing()
    assert protocol.direct_send_text("resumed") is True
    await peer.app.send({"type": "websocket.close", "code": 1000})
    assert protocol.close_sent, "uvicorn no longer marks close_sent when the app closes"
    assert protocol.direct_send_text("closed") is False
    assert [f.data for f in peer.frames() if f.opcode is Opcode.TEXT] == [b"resumed"]


async def test_a_prepared_frame_is_the_frame_websockets_itself_sends_and_is_made_once(peers: Any) -> None:
    """direct_send_text writes bytes made once per message for every connection; they must be exactly
    what websockets' own send_text would have written."""
    first, second = peers(), peers()
    for peer in (first, second):
        await peer.open()
        assert peer.protocol.frame_setting == ()
    text = '{"type":"data","seq":1}' + "x" * 300  # a 16-bit length in the header
    assert first.protocol.direct_send_text(text) and second.protocol.direct_send_text(text)
    made_once = uvicorn_ws.prepared.frames[()]
    assert first.transport.take() == second.transport.take() == made_once
    theirs = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert made_once == theirs


async def test_with_compression_each_message_is_compressed_once_and_every_client_reads_it(
    peers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    monkeypatch.setattr(settings, "WS_COMPRESSION", True)
    deflating, deflating_too, plain = peers(), peers(), peers()
    for peer in (deflating, deflating_too):
        peer.client = ClientProtocol(
            parse_uri("ws://127.0.0.1:8000/ws/echo/"), extensions=[ClientPerMessageDeflateFactory()]
        )
    for peer in (deflating, deflating_too, plain):
        await peer.open()
    # The server answered the offer without context takeover on its side: frames can be shared.
    assert deflating.protocol.frame_setting == ("permessage-deflate", 15)
    assert plain.protocol.frame_setting == ()
    text = '{"type":"data","values":{"a":1.5}}' * 20
    for peer in (deflating, deflating_too, plain):
        assert peer.protocol.direct_send_text(text)
    compressed = uvicorn_ws.prepared.frames[("permessage-deflate", 15)]
    assert len(compressed) < len(text) / 4
    assert deflating.transport.written == deflating_too.transport.written == compressed
    for peer in (deflating, deflating_too, plain):
        assert [(f.opcode, f.data.decode()) for f in peer.frames()] == [(Opcode.TEXT, text)]
    # Messages the app sends the usual way are compressed too, and still read right after shared ones.
    await deflating.app.send({"type": "websocket.send", "text": "batched"})
    assert deflating.protocol.direct_send_text(text)
    assert [f.data.decode() for f in deflating.frames()] == ["batched", text]


WEBSOCKETS_ATTRIBUTES = {
    # What PreparedFrames and direct_send_text read of websockets' sans-I/O connection.
    "expect_continuation_frame": lambda conn: conn.expect_continuation_frame is False,
    "extensions": lambda conn: conn.extensions == [],
    "logger": lambda conn: conn.logger is not None,
    "state": lambda conn: conn.state.name == "CONNECTING",
}


@pytest.mark.parametrize("attribute", WEBSOCKETS_ATTRIBUTES)
def test_websockets_connection_attribute_we_read_is_there(attribute: str) -> None:
    assert WEBSOCKETS_ATTRIBUTES[attribute](ServerProtocol()), f"websockets' {attribute} changed"


def test_permessage_deflate_says_whether_it_keeps_context_and_how() -> None:
    from websockets.extensions.permessage_deflate import PerMessageDeflate

    deflate = PerMessageDeflate(False, True, 15, 12, {"memLevel": 5})
    assert deflate.local_no_context_takeover is True
    assert deflate.local_max_window_bits == 12
    assert deflate.compress_settings == {"memLevel": 5}


async def test_pause_writing_holds_the_apps_sends_until_resume_writing(peers: Any) -> None:
    peer = peers()
    await peer.open()
    peer.protocol.pause_writing()
    sending = asyncio.ensure_future(peer.app.send({"type": "websocket.send", "text": "held"}))
    await loop_turns()
    assert not sending.done(), "uvicorn's pause_writing no longer makes send() wait"
    peer.protocol.resume_writing()
    await asyncio.wait_for(sending, timeout(1))
    assert [f.data for f in peer.frames()] == [b"held"]


async def test_a_socket_unwritable_for_stall_seconds_is_closed_with_1013_then_aborted(
    peers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BoundedWebSocketProtocol, "stall_seconds", 0.01)
    monkeypatch.setattr(uvicorn_ws, "STALLED_CLOSE_SECONDS", 0.01)
    peer = peers()
    await peer.open()
    peer.protocol.pause_writing()
    async with asyncio.timeout(timeout(2)):
        while not peer.transport.aborted:
            await asyncio.sleep(0.01)
    assert closes(peer.frames()) == [(1013, "stalled: not reading")]
    await loop_turns()
    assert peer.app.received[-1] == {
        "type": "websocket.disconnect",
        "code": 1013,
        "reason": "stalled: not reading",
    }


async def test_connection_lost_after_pause_writing_cancels_the_stall_timer(peers: Any) -> None:
    peer = peers()
    await peer.open()
    peer.protocol.pause_writing()
    assert peer.protocol._stall_timer is not None
    peer.protocol.connection_lost(None)
    assert peer.protocol._stall_timer is None
    assert peer.protocol.writable.is_set(), "uvicorn's connection_lost no longer releases waiting senders"


def test_uvicorns_receive_takes_from_the_queue_and_resumes_reading_once_it_is_empty() -> None:
    """Ours returns the queue's future instead of awaiting it: nothing else may be missing."""
    assert body_statements(WebSocketsSansIOProtocol.receive) == [
        "message = await self.queue.get()",
        "if self.read_paused and self.queue.empty():",
        "self.read_paused = False",
        "self.transport.resume_reading()",
        "return message",
    ]


async def test_send_receive_event_to_app_queues_the_message_and_pauses_reading_until_taken(
    peers: Any,
) -> None:
    """Our override must keep uvicorn's flow control (its absence once exhausted memory)."""
    peer = peers()
    await peer.open()
    peer.client.send_text("é".encode())
    peer.client.send_binary(b"\x00")
    peer.to_server()
    protocol = peer.protocol
    assert protocol.queue.qsize() == 1, "the waiting app is handed the first, the second must wait"
    assert protocol.read_paused and not peer.transport.reading, "reading is no longer paused"
    await loop_turns()
    assert peer.app.received[1:] == [
        {"type": "websocket.receive", "text": "é"},
        {"type": "websocket.receive", "bytes": b"\x00"},
    ]
    assert not protocol.read_paused and peer.transport.reading, "receive() no longer resumes reading"


async def test_a_read_of_many_small_frames_is_parsed_a_slice_per_loop_turn_in_order(peers: Any) -> None:
    """One read of thousands of tiny frames must not hold the event loop while all are parsed."""
    peer = peers()
    await peer.open()
    protocol = peer.protocol

    def frames(numbers: range) -> bytes:
        for n in numbers:
            peer.client.send_text(b"%d" % n)
        return b"".join(peer.client.data_to_send())

    first = frames(range(5000))
    assert len(first) > 4 * uvicorn_ws.PARSE_BYTES
    protocol.data_received(first)
    assert 0 < protocol.queue.qsize() < 1000, "the whole read was parsed at once"
    # More arrives meanwhile: it waits behind the first, and past UNPARSED_BYTES reading pauses.
    more = frames(range(5000, 20000))
    assert len(more) > uvicorn_ws.UNPARSED_BYTES
    peer.transport.resume_reading()  # as uvicorn does once the app took what was queued
    protocol.data_received(more)
    assert not peer.transport.reading, "reading goes on while too much waits to be parsed"
    for _ in range(100_000):
        if len(peer.app.received) > 20000:
            break
        await loop_turns(1)
    texts = [m["text"] for m in peer.app.received[1:]]
    assert texts == [str(n) for n in range(20000)]
    assert peer.transport.reading, "reading was not resumed once everything was parsed"


async def test_invalid_utf8_closes_with_1007_and_tells_the_app_without_a_traceback(
    peers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    peer = peers()
    await peer.open()
    peer.client.send_text(b"\xff\xfe")
    peer.to_server()
    await loop_turns()
    frames = peer.frames()
    assert closes(frames) == [(1007, "invalid UTF-8")]
    # Why, as an error frame just before the close, as the consumer's own refusals have.
    assert [json.loads(f.data) for f in frames if f.opcode is Opcode.TEXT] == [
        {"type": "error", "code": "invalid_utf8", "detail": "invalid UTF-8"}
    ]
    assert peer.protocol.close_sent and peer.protocol.lingering
    assert peer.app.received[-1] == {"type": "websocket.disconnect", "code": 1007, "reason": "invalid UTF-8"}
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


async def test_handle_parser_exception_tells_the_app_sends_the_close_and_lingers(peers: Any) -> None:
    """What _drop and the 1007 close rely on, after conn.send_close(): the close frame goes out and the
    write side is shut, but the socket is not closed under a client that may still be sending."""
    peer = peers()
    await peer.open()
    peer.protocol.conn.send_close(1013, "why")
    peer.protocol.handle_parser_exception()
    await loop_turns()
    assert closes(peer.frames()) == [(1013, "why")]
    assert peer.protocol.close_sent and peer.transport.eof_written and not peer.transport.closing
    assert peer.app.received[-1] == {"type": "websocket.disconnect", "code": 1013, "reason": "why"}


def test_ours_does_what_uvicorns_handle_parser_exception_does_but_close() -> None:
    """Ours replaces it: if uvicorn's starts doing more, ours must learn it too."""
    lines = [
        line.strip()
        for line in inspect.getsource(WebSocketsSansIOProtocol.handle_parser_exception).splitlines()
    ]
    body = [line for line in lines[1:] if line and not line.startswith(("#", "assert"))]
    assert body == [
        "code = self.conn.close_sent.code",
        "reason = self.conn.close_sent.reason",
        'self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})',
        "output = self.conn.data_to_send()",
        'self.transport.write(b"".join(output))',
        "self.close_sent = True",
        "self.transport.close()",
    ], body


def test_uvicorn_parses_input_in_data_received_and_the_transport_closes_itself_on_eof() -> None:
    assert "self.conn.receive_data(data)" in inspect.getsource(WebSocketsSansIOProtocol.data_received)
    assert not WebSocketsSansIOProtocol.eof_received(None), "a false value lets asyncio close the transport"  # type: ignore[arg-type]


async def test_after_the_apps_close_input_is_dropped_unparsed_and_the_write_side_shut(peers: Any) -> None:
    peer = peers()
    await peer.open()
    for n in range(3):  # frames the app has not taken yet when it closes (the first is handed to it)
        peer.client.send_text(b"early %d" % n)
    peer.to_server()
    assert peer.protocol.read_paused and peer.protocol.queue.qsize() == 2
    await peer.app.send({"type": "websocket.close", "code": 1008, "reason": "rate_limited"})
    assert peer.protocol.close_sent, "uvicorn's websocket.close no longer marks the close as sent"
    assert peer.transport.eof_written and peer.transport.reading and not peer.transport.closing
    for _ in range(1000):
        peer.client.send_text(b"flood")
    peer.to_server()
    await loop_turns()
    assert [m["type"] for m in peer.app.received[1:]] == ["websocket.receive", "websocket.disconnect"], (
        "input the app had not been handed reached it"
    )
    assert closes(peer.frames()) == [(1008, "rate_limited")]
    assert peer.protocol.close_timer is not None
    assert not peer.protocol.eof_received(), "the client's end of the stream no longer closes the socket"


async def test_a_client_still_sending_after_closing_bytes_is_aborted(
    peers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uvicorn_ws, "CLOSING_BYTES", 1000)
    peer = peers()
    await peer.open()
    await peer.app.send({"type": "websocket.close", "code": 1008})
    peer.protocol.data_received(b"x" * 999)
    assert not peer.transport.aborted
    peer.protocol.data_received(b"xx")
    assert peer.transport.aborted


async def test_a_client_that_never_ends_after_the_close_is_aborted_after_closing_seconds(
    peers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uvicorn_ws, "CLOSING_SECONDS", 0.01)
    peer = peers()
    await peer.open()
    await peer.app.send({"type": "websocket.close", "code": 1000})
    async with asyncio.timeout(timeout(2)):
        while not peer.transport.aborted:
            await asyncio.sleep(0.01)


async def test_shutdown_closes_an_open_socket_with_1001_and_waits_for_the_clients_answer(
    peers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    peer = peers()
    other, idle = peers(server_state=peer.server_state), peers(server_state=peer.server_state)
    await peer.open()
    await other.open()
    caplog.set_level("INFO", logger="wsproject.uvicorn_ws")
    for connection in (peer, other, idle):  # as uvicorn's server does
        connection.protocol.shutdown()
    await loop_turns()
    assert idle.transport.closing and idle.transport.take().startswith(b"HTTP/1.1 500")  # uvicorn's own
    assert closes(other.frames()) == closes(peer.frames()) == [(1001, "going away")]
    assert peer.app.received[-1] == {"type": "websocket.disconnect", "code": 1001, "reason": "going away"}
    assert not peer.transport.closing, "closed before the client could answer"
    assert peer.protocol.close_timer is not None, "the answer is no longer timed out"
    ours = [r.getMessage() for r in caplog.records if r.name == "wsproject.uvicorn_ws"]
    assert ours == ["Closing 2 WebSocket connections with 1001"]
    assert peer.transport.eof_written  # the client reads the close, then the end, and closes its side


async def test_shutdown_gives_a_silent_client_shutdown_seconds(
    peers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BoundedWebSocketProtocol, "shutdown_seconds", 0.01)
    peer = peers()
    await peer.open()
    peer.protocol.shutdown()
    async with asyncio.timeout(timeout(2)):
        while not peer.transport.aborted:
            await asyncio.sleep(0.01)
    assert closes(peer.frames()) == [(1001, "going away")]


# ---------------------------------------------------------------- daphne and autobahn


@pytest.fixture
def daphne_compat(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """wsproject.daphne_compat, imported in this test process only (daphne is never imported by the
    production server); what install() replaces is put back afterwards."""
    import daphne.server

    from wsproject import daphne_compat

    monkeypatch.setattr(daphne.server, "WebSocketFactory", daphne.server.WebSocketFactory)
    yield daphne_compat


def daphne_protocol(daphne_compat: Any) -> tuple[Any, list[tuple[int, bytes]]]:
    """A CompatWebSocketProtocol from its factory, open, with the frames it sends recorded."""
    factory = daphne_compat.CompatWebSocketFactory(object(), server="test")
    protocol = factory.buildProtocol(None)
    sent: list[tuple[int, bytes]] = []
    protocol.sendFrame = lambda opcode, payload=b"", **_: sent.append((opcode, payload))
    protocol.state = protocol.STATE_OPEN
    protocol.client_addr = ("127.0.0.1", 50000)  # set by daphne's onConnect
    protocol.closeHandshakeTimeout = 0
    return protocol, sent


def test_daphne_builds_its_websocket_factory_by_the_name_install_replaces(daphne_compat: Any) -> None:
    import daphne.server

    run = inspect.getsource(daphne.server.Server.run)
    assert "self.ws_factory = WebSocketFactory(self, " in run, (
        "daphne's Server.run builds its factory otherwise"
    )
    daphne_compat.install()
    assert daphne.server.WebSocketFactory is daphne_compat.CompatWebSocketFactory


def test_websocket_factory_init_takes_the_server_and_the_factory_uses_our_protocol(
    daphne_compat: Any,
) -> None:
    from daphne.ws_protocol import WebSocketFactory

    assert list(inspect.signature(WebSocketFactory.__init__).parameters) == [
        "self", "server_class", "args", "kwargs"
    ], "daphne's WebSocketFactory.__init__ signature changed"  # fmt: skip
    protocol, _ = daphne_protocol(daphne_compat)
    assert isinstance(protocol, daphne_compat.CompatWebSocketProtocol), "buildProtocol ignores .protocol"
    assert protocol.factory.server_class is not None


def test_fail_by_drop_stays_off_through_daphnes_own_protocol_options(daphne_compat: Any) -> None:
    assert (
        "failByDrop" in inspect.signature(daphne_compat.CompatWebSocketFactory.setProtocolOptions).parameters
    )
    factory = daphne_compat.CompatWebSocketFactory(object(), server="test")
    assert factory.failByDrop is False, "autobahn no longer keeps failByDrop as an attribute"
    # What daphne's Server.run sets next (with its own values), as it does after building the factory.
    factory.setProtocolOptions(autoPingTimeout=20, allowNullOrigin=True, openHandshakeTimeout=5)
    assert factory.failByDrop is False


def test_autobahns_send_close_frame_sends_any_code_with_the_reason(daphne_compat: Any) -> None:
    from autobahn.websocket.protocol import WebSocketProtocol

    assert list(inspect.signature(WebSocketProtocol.sendCloseFrame).parameters) == [
        "self", "code", "reasonUtf8", "isReply"
    ], "autobahn's sendCloseFrame signature changed"  # fmt: skip
    protocol, sent = daphne_protocol(daphne_compat)
    protocol.handle_reply({"type": "websocket.close", "code": 1013, "reason": "later"})
    assert sent == [(8, b"\x03\xf5later")], "sendCloseFrame no longer writes the close frame via sendFrame"
    assert protocol.state == protocol.STATE_CLOSING


def test_server_close_keeps_daphnes_calls_working(daphne_compat: Any) -> None:
    """daphne calls serverClose() (timeouts) and serverClose(code=...) (handle_reply): ours takes both."""
    import daphne.ws_protocol

    source = inspect.getsource(daphne.ws_protocol)
    calls = set(re.findall(r"self\.serverClose\((.*)\)$", source, re.MULTILINE))
    assert calls, "daphne no longer calls serverClose"
    assert all(call == "" or call.startswith("code=") for call in calls), f"daphne calls serverClose({calls})"
    ours = inspect.signature(daphne_compat.CompatWebSocketProtocol.serverClose).parameters
    assert set(inspect.signature(daphne.ws_protocol.WebSocketProtocol.serverClose).parameters) <= set(ours)
    protocol, sent = daphne_protocol(daphne_compat)
    protocol.serverClose()
    assert sent == [(8, b"\x03\xe8")]


def test_handle_reply_is_how_daphnes_server_passes_on_each_message_of_the_app(daphne_compat: Any) -> None:
    import daphne.server
    from daphne.ws_protocol import WebSocketProtocol

    assert list(inspect.signature(WebSocketProtocol.handle_reply).parameters) == ["self", "message"]
    assert "protocol.handle_reply(message)" in inspect.getsource(daphne.server.Server.handle_reply)
    assert hasattr(WebSocketProtocol, "STATE_CONNECTING") and hasattr(WebSocketProtocol, "STATE_OPEN")
    protocol, sent = daphne_protocol(daphne_compat)
    protocol.state = protocol.STATE_CONNECTING
    with pytest.raises(ValueError, match="not been accepted"):  # daphne's own, reached through super()
        protocol.handle_reply({"type": "websocket.send", "text": "early"})
    assert sent == []


def test_a_send_after_the_client_left_raises_client_gone_an_os_error(daphne_compat: Any) -> None:
    from autobahn.exception import Disconnected

    assert issubclass(Disconnected, Exception)
    protocol, _ = daphne_protocol(daphne_compat)
    protocol.state = protocol.STATE_CLOSED
    with pytest.raises(daphne_compat.ClientGone) as gone:
        protocol.handle_reply({"type": "websocket.send", "text": "late"})
    assert isinstance(gone.value, OSError) and isinstance(gone.value.__cause__, Disconnected), (
        "autobahn no longer raises Disconnected for a send on a closed protocol"
    )


def test_daphnes_runserver_command_is_there_to_extend() -> None:
    from daphne.management.commands.runserver import Command

    from wsproject.devserver.management.commands import runserver

    assert runserver.MISSING is None and issubclass(runserver.Command, Command)
    assert "handle" in vars(Command), "daphne's runserver no longer has its own handle()"


# ---------------------------------------------------------------- versions


def pins(requirements: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by canonical name."""
    found = {}
    for line in (ROOT / requirements).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version.strip()
    return found


def assert_pinned(tested: dict[str, str], requirements: str) -> None:
    pinned = pins(requirements)
    for package, version in tested.items():
        assert pinned.get(canonicalize_name(package)) == version, f"{package} in {requirements}"
        assert metadata.version(package) == version, f"{package} installed here"


def test_uvicorn_ws_was_tested_with_the_pinned_uvicorn_and_websockets() -> None:
    assert_pinned(uvicorn_ws.TESTED, "requirements.txt")


def test_daphne_compat_was_tested_with_the_pinned_daphne_and_autobahn(daphne_compat: Any) -> None:
    assert_pinned(daphne_compat.TESTED, "requirements-dev.txt")


def test_an_untested_version_is_one_line_saying_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(versions.ALLOW_UNTESTED, raising=False)
    assert uvicorn_ws.refusal() is None
    message = versions.refusal({"uvicorn": "0.0.1", "not-a-package-here": "1"}, "wsproject/uvicorn_ws.py")
    assert message is not None and "\n" not in message
    assert message.startswith(
        f"uvicorn {uvicorn.__version__} is not the tested 0.0.1; not-a-package-here is not"
    )
    assert "tests/test_internals.py" in message and message.endswith(
        "(set WS_ALLOW_UNTESTED_SERVER=1 to try anyway)"
    )


def test_the_variable_lets_an_untested_version_start_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(versions.ALLOW_UNTESTED, "1")
    assert versions.refusal({"uvicorn": "0.0.1"}, "m") is None
    assert "uvicorn " + uvicorn.__version__ + " is not the tested 0.0.1; starting anyway" in caplog.text


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        cwd=ROOT,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )


def test_the_production_server_refuses_an_untested_uvicorn_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != versions.ALLOW_UNTESTED}
    done = run_python(
        "from wsproject import server, uvicorn_ws; uvicorn_ws.TESTED['uvicorn'] = '0.0.1'; server.main()",
        "--port", "0", env=env,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"wsproject.server: uvicorn {uvicorn.__version__} is not the tested 0.0.1: wsproject/uvicorn_ws.py "
        "relies on internals that tests/test_internals.py checks against the tested versions "
        "(set WS_ALLOW_UNTESTED_SERVER=1 to try anyway)\n"
    )


def test_runserver_refuses_an_untested_daphne_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != versions.ALLOW_UNTESTED}
    done = run_python(
        "import runpy, sys; from wsproject import daphne_compat; daphne_compat.TESTED['daphne'] = '0.0.1'; "
        "sys.argv = ['manage.py', 'runserver', '127.0.0.1:0', '--noreload']; "
        "runpy.run_path('manage.py', run_name='__main__')",
        env=env,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith("CommandError: daphne 4.2.3 is not the tested 0.0.1: ")
    assert "Traceback" not in done.stderr and "Listening" not in done.stderr + done.stdout


def test_the_production_server_says_in_one_line_what_configuration_is_missing() -> None:
    env = {**os.environ, "DJANGO_SECRET_KEY": "", "DJANGO_DEBUG": "0"}
    done = run_python("from wsproject import server; server.main()", "--port", "0", env=env)
    assert done.returncode == 2
    assert (
        done.stderr.startswith("wsproject.server: DJANGO_SECRET_KEY is not set")
        and done.stderr.count("\n") == 1
    )


# ---------------------------------------------------------------- daphne stays out of production


async def test_no_production_server_process_imports_daphne_twisted_or_autobahn(
    server_env: dict[str, str],
) -> None:
    """Every import of every process (supervisor and two workers) shows, as Python's -X importtime."""
    env = {**server_env, "PYTHONPROFILEIMPORTTIME": "1", "WEB_CONCURRENCY": "2"}
    with start_server([sys.executable, "-m", "wsproject.server", "--port", "0"], env) as running:
        running.output.wait_for_count(r"Started server process \[\d+\]", 2, 30)
        async with websockets.connect(running.ws_url("/ws/echo/?topics=prices"), origin=running.origin) as ws:
            await ws.send("imports")
            assert await next_echo(ws) == "imports"
        await asyncio.to_thread(stop, running.process)
        output = running.output.drain()
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +([\w.]+)$", output, re.MULTILINE)
    assert imported.count("echo.consumers") == 2, "each worker's imports should show"
    forbidden = sorted({name for name in imported if name.split(".")[0] in FORBIDDEN_IN_PRODUCTION})
    assert forbidden == [], f"the production server imported {forbidden}"


NOT_INSTALLED = """
import importlib.abc, runpy, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {FORBIDDEN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.argv = ["manage.py", *sys.argv[1:]]
runpy.run_path("manage.py", run_name="__main__")
"""


def test_without_daphne_installed_the_app_builds_and_runserver_says_what_to_install() -> None:
    script = NOT_INSTALLED.format(FORBIDDEN=set(FORBIDDEN_IN_PRODUCTION))
    env = {**os.environ, "DJANGO_ENV_FILE": ""}
    checked = run_python(
        script, "shell", "-c", "from wsproject.asgi import application; print('built')", env=env
    )
    assert checked.returncode == 0 and checked.stdout.splitlines()[-1] == "built", checked.stderr
    refused = run_python(script, "runserver", "127.0.0.1:0", "--noreload", env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.splitlines()[-1] == (
        "CommandError: runserver is daphne, a development dependency (No module named 'daphne'): pip install "
        "-r requirements-dev.txt, or run the production server: python -m wsproject.server"
    )


def test_the_production_requirements_hold_everything_they_pull_in_and_nothing_of_daphne() -> None:
    production = pins("requirements.txt")
    needed: set[str] = set()
    pending = list(production)
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    assert needed <= set(production), f"not pinned in requirements.txt: {sorted(needed - set(production))}"
    assert not {"daphne", "twisted", "autobahn"} & needed
    development = pins("requirements-dev.txt")
    assert {"daphne", "twisted", "autobahn"} <= set(development)
    assert Path(ROOT / "Dockerfile").read_text().count("requirements-dev") == 0


# ---------------------------------------------------------------- uvicorn: the HTTP protocol's deadline


def test_uvicorn_takes_the_http_protocol_class_by_import_string() -> None:
    config = uvicorn.Config(server.APPLICATION, **server.options("127.0.0.1", 0, 1))
    config.load()
    assert config.http_protocol_class is uvicorn_ws.BoundedHttpProtocol


async def empty_http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def http_protocol() -> tuple[uvicorn_ws.BoundedHttpProtocol, FakeTransport]:
    config = uvicorn.Config(empty_http_app, **{**server.options("127.0.0.1", 0, 1), "factory": False})
    config.load()
    protocol = uvicorn_ws.BoundedHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_the_headers_deadline_runs_from_connection_made_until_on_headers_complete() -> None:
    """uvicorn calls connection_made, then its parser on_message_begin and on_headers_complete from
    data_received: the deadline is armed, kept across a partial request, and cancelled by the headers."""
    protocol, _ = http_protocol()
    armed = protocol.headers_deadline
    assert armed is not None and protocol.loop is asyncio.get_running_loop()
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: local")
    assert protocol.headers_deadline is armed  # on_message_begin keeps the running deadline
    protocol.data_received(b"host\r\n\r\n")
    assert protocol.headers_deadline is None and armed.cancelled()
    protocol.connection_lost(None)


async def test_past_the_deadline_the_connection_gets_a_408_and_is_closed(monkeypatch: Any) -> None:
    monkeypatch.setattr(settings, "HTTP_HEADERS_TIMEOUT", 0.01)
    protocol, transport = http_protocol()
    protocol.data_received(b"GET / HTTP/1.1\r\nX-Slow: a")
    async with asyncio.timeout(timeout(5)):
        while not transport.closing:
            await asyncio.sleep(0.01)
    assert transport.take().startswith(b"HTTP/1.1 408 ")
    assert protocol.client == ("127.0.0.1", 50000)


async def test_shutdown_ends_a_streaming_response_and_the_app_hears_disconnect() -> None:
    """uvicorn's cycle: response_started / response_complete say a response is streaming; setting
    disconnected and message_event makes the app's receive() answer http.disconnect."""
    heard: list[str] = []

    async def streaming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        while (message := await receive())["type"] != "http.disconnect":
            pass
        heard.append(message["type"])

    config = uvicorn.Config(streaming_app, **{**server.options("127.0.0.1", 0, 1), "factory": False})
    config.load()
    protocol = uvicorn_ws.BoundedHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"GET /events/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
    async with asyncio.timeout(timeout(5)):
        while protocol.cycle is None or not protocol.cycle.response_started:
            await asyncio.sleep(0)
    assert b"data: 1" in transport.take()
    protocol.shutdown()
    async with asyncio.timeout(timeout(5)):
        while not heard:
            await asyncio.sleep(0)
    assert heard == ["http.disconnect"] and transport.closing
