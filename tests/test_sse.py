"""Server-Sent Events (``GET /events/``) through the real ASGI application and a real Redis, in-process.

The stream's events are read from the ``http.response.body`` messages the application sends, as a
browser's ``EventSource`` would parse them. Servers, curl, nginx and Chromium: tests/test_sse_servers.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth import get_user_model

from echo.access import tokens
from echo.layer.events import OVERFLOW_EVENT
from echo.protocol import topic_group
from echo.publishing import apublish
from echo.sse import EventStreamConsumer
from tests.helpers.processes import timeout
from wsproject.asgi import application


@dataclass
class Event:
    """One dispatched SSE event: its type ("message" unless named), data and the last id set before it."""

    type: str
    data: str
    id: str

    @property
    def frame(self) -> dict[str, Any]:
        return json.loads(self.data)


@dataclass
class EventStream:
    """An event stream being read through the application, parsed as EventSource parses it."""

    communicator: ApplicationCommunicator
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    last_id: str = ""
    _buffer: str = ""
    _fields: dict[str, str] = field(default_factory=dict)
    _data: list[str] = field(default_factory=list)

    async def start(self) -> None:
        message = await self.communicator.receive_output(timeout(10))
        assert message["type"] == "http.response.start", message
        self.status = message["status"]
        self.headers = {name.decode(): value.decode() for name, value in message["headers"]}

    async def read(self, seconds: float = 10) -> None:
        """Take the next body message and parse what it completes."""
        message = await self.communicator.receive_output(timeout(seconds))
        assert message["type"] == "http.response.body", message
        self.body += message.get("body", b"")
        self.ended = not message.get("more_body", False)
        self._parse(message.get("body", b"").decode())

    def _parse(self, text: str) -> None:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if not line:
                if self._data:
                    self.events.append(
                        Event(self._fields.get("event", "message"), "\n".join(self._data), self.last_id)
                    )
                self._fields, self._data = {}, []
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                elif name == "id":
                    self.last_id = value
                elif name == "retry":
                    self.retry = int(value)
                else:
                    self._fields[name] = value

    async def until(self, predicate: Any, seconds: float = 10) -> None:
        while not predicate(self):
            assert not self.ended, f"the stream ended: {self.events}"
            await self.read(seconds)

    def data(self, topic: str | None = None) -> list[Event]:
        return [
            e for e in self.events if e.type == "message" and (topic is None or e.frame["topic"] == topic)
        ]

    async def close(self) -> None:
        await self.communicator.send_input({"type": "http.disconnect"})
        await self.communicator.wait(timeout(10))


async def open_stream(
    query: str, headers: list[tuple[bytes, bytes]] | None = None, method: str = "GET"
) -> EventStream:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": "/events/",
        "raw_path": b"/events/",
        "root_path": "",
        "scheme": "http",
        "query_string": query.encode(),
        "headers": [(b"host", b"localhost"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    stream = EventStream(ApplicationCommunicator(application, scope))
    await stream.communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    await stream.start()
    return stream


@pytest.fixture
async def streams() -> AsyncIterator[list[EventStream]]:
    opened: list[EventStream] = []
    yield opened
    for stream in opened:
        if not stream.ended:
            await stream.close()


def seqs(events: list[Event]) -> list[int]:
    return [event.frame["seq"] for event in events]


async def test_a_stream_carries_history_then_live_frames_each_one_event_with_the_position_as_id(
    streams: list[EventStream], topic: str
) -> None:
    other = topic + "-b"
    published = [await apublish(topic, {"v": n}) for n in range(3)]
    stream = await open_stream(f"topics={topic},{other}&history=2")
    streams.append(stream)
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["x-accel-buffering"] == "no"
    assert "no-cache" in stream.headers["cache-control"]
    await stream.until(lambda s: len(s.data(topic)) == 2)
    assert stream.retry is not None and stream.retry > 0
    epoch = published[-1].epoch
    assert seqs(stream.data(topic)) == [2, 3]
    assert [e.id for e in stream.data(topic)] == [f"{topic}:2:{epoch}", f"{topic}:3:{epoch}"]
    assert all(e.frame["replay"] is True for e in stream.data(topic))

    # The other topic had no stream: once the replay is out, the id says so too (an id-only event).
    await stream.until(lambda s: s.last_id == f"{topic}:3:{epoch},{other}:0")
    live = await apublish(topic, {"v": 3})
    await stream.until(lambda s: len(s.data(topic)) == 3)
    event = stream.data(topic)[-1]
    assert event.id == f"{topic}:{live.seq}:{epoch},{other}:0"
    # data: is exactly the WebSocket frame's JSON text (one encoding per message).
    assert event.data.startswith(f'{{"type":"data","topic":"{topic}","epoch":"{epoch}","seq":4,')
    assert event.frame["values"] == {"v": 3}
    first = await apublish(other, {"w": 1})
    await stream.until(lambda s: len(s.data(other)) == 1)
    assert stream.data(other)[0].id == f"{topic}:4:{epoch},{other}:1:{first.epoch}"


async def test_last_event_id_resumes_exactly_and_wins_over_the_urls_since(
    streams: list[EventStream], topic: str
) -> None:
    positions = [await apublish(topic, {"v": n}) for n in range(6)]
    epoch = positions[0].epoch
    stream = await open_stream(
        f"topics={topic}&since={topic}:1:{epoch}", headers=[(b"last-event-id", f"{topic}:4:{epoch}".encode())]
    )
    streams.append(stream)
    await stream.until(lambda s: len(s.data()) == 2)
    await apublish(topic, {"v": 6})
    await stream.until(lambda s: len(s.data()) == 3)
    assert seqs(stream.data()) == [5, 6, 7]


async def test_a_reset_is_a_named_event_that_moves_the_id_to_the_new_epoch(
    streams: list[EventStream], topic: str
) -> None:
    position = await apublish(topic, {"v": 1})
    stream = await open_stream(f"topics={topic}&since={topic}:9:zzgone")
    streams.append(stream)
    await stream.until(lambda s: len(s.data()) == 1)
    reset = next(e for e in stream.events if e.type == "reset")
    assert reset.frame["epoch"] == position.epoch
    assert reset.id == f"{topic}:0:{position.epoch}"
    assert stream.data()[0].id == f"{topic}:1:{position.epoch}"


async def test_presence_and_warnings_are_named_events(streams: list[EventStream], topic: str) -> None:
    stream = await open_stream(f"topics={topic}&history=0")
    streams.append(stream)
    await stream.until(lambda s: any(e.type == "presence" for e in s.events))
    presence = next(e for e in stream.events if e.type == "presence")
    assert presence.frame == {"type": "presence", "topic": topic, "count": 1}


async def test_a_comment_heartbeat_keeps_an_idle_stream_alive(
    streams: list[EventStream], topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EventStreamConsumer, "heartbeat_seconds", 0.05)
    stream = await open_stream(f"topics={topic}&history=0")
    streams.append(stream)
    await stream.until(lambda s: s.comments.count("ping") >= 2)


@pytest.mark.parametrize(
    ("query", "headers", "method", "status", "code"),
    [
        ("topics=Bad!", [], "GET", 400, "bad_topics"),
        ("topics=a&history=x", [], "GET", 400, "bad_history"),
        ("topics=a", [(b"last-event-id", b"b:1:e1")], "GET", 400, "bad_since"),
        ("topics=user-1", [], "GET", 403, "forbidden"),
        ("topics=a", [(b"authorization", b"Bearer forged.token")], "GET", 401, "bad_token"),
        ("topics=a", [], "POST", 405, "bad_method"),
        ("topics=a", [(b"origin", b"http://evil.example")], "GET", 403, "forbidden_origin"),
    ],
)
async def test_a_refused_stream_is_an_http_status_with_the_errors_code(
    query: str, headers: list[tuple[bytes, bytes]], method: str, status: int, code: str
) -> None:
    stream = await open_stream(query, headers, method)
    await stream.read()
    assert stream.status == status, stream.body
    assert stream.ended
    assert json.loads(stream.body)["error"] == code
    if status == 401:
        assert stream.headers["www-authenticate"].startswith("Bearer")
    await stream.communicator.wait(timeout(10))


async def test_an_allowed_origin_may_stream(streams: list[EventStream], topic: str) -> None:
    stream = await open_stream(f"topics={topic}&history=0", [(b"origin", b"http://localhost:8000")])
    streams.append(stream)
    assert stream.status == 200


async def test_a_bearer_token_reads_a_private_topic_and_its_expiry_ends_the_stream_with_an_error_event(
    streams: list[EventStream],
) -> None:
    user = await asyncio.to_thread(
        get_user_model().objects.create_user, "u" + uuid.uuid4().hex[:10], password=uuid.uuid4().hex
    )
    private = f"user-{user.pk}"
    token, _ = tokens.issue(ttl=1.5, user_id=user.pk, auth_hash=await asyncio.to_thread(password_stamp, user))
    stream = await open_stream(
        f"topics={private}&history=0", [(b"authorization", f"Bearer {token}".encode())]
    )
    streams.append(stream)
    assert stream.status == 200, stream.body
    await apublish(private, {"v": 1})
    await stream.until(lambda s: len(s.data()) == 1)
    await stream.until(lambda s: s.ended, seconds=10)
    error = [e for e in stream.events if e.type == "error"]
    assert [e.frame["code"] for e in error] == ["token_expired"]


def password_stamp(user: Any) -> str:
    from echo.access.identity import password_stamp as stamp

    return stamp(user)


async def test_an_overflowing_stream_ends_so_that_the_browser_resumes_it(
    streams: list[EventStream], topic: str, layer: Any
) -> None:
    stream = await open_stream(f"topics={topic}&history=0")
    streams.append(stream)
    await stream.until(lambda s: any(e.type == "presence" for e in s.events))
    consumer = next(
        c
        for c in gc.get_objects()
        if isinstance(c, EventStreamConsumer) and c.joined and c.groups == [topic_group(topic)]
    )
    await layer.send(consumer.channel_name, {"type": OVERFLOW_EVENT, "dropped": 5})
    await stream.until(lambda s: s.ended)
    assert not [e for e in stream.events if e.type == "error"]


def test_the_bearer_scheme_is_case_insensitive_and_other_schemes_are_ignored() -> None:
    from echo.sse import bearer_token

    assert bearer_token({"headers": [(b"authorization", b"bearer abc")]}) == "abc"
    assert bearer_token({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert bearer_token({"headers": []}) is None
