"""The consumer, driven through the real ASGI application with WebsocketCommunicator and a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from channels.testing import WebsocketCommunicator

from echo import broadcast
from echo.broadcast import Publisher
from echo.protocol import BROADCAST_GROUP
from wsproject.asgi import application

ORIGIN = (b"origin", b"http://localhost:8000")


@pytest.fixture
async def client() -> AsyncIterator[WebsocketCommunicator]:
    communicator = WebsocketCommunicator(application, "/ws/echo/", headers=[ORIGIN])
    connected, _ = await communicator.connect()
    assert connected
    yield communicator
    await communicator.disconnect()


@pytest.mark.parametrize("text", ["*", "hello", "héllo wörld ✓ 漢字 🚀", "", "x" * 65536])
async def test_text_frames_are_echoed_verbatim(client: WebsocketCommunicator, text: str) -> None:
    # send_input, because WebsocketCommunicator.send_to refuses empty frames.
    await client.send_input({"type": "websocket.receive", "text": text})
    assert await client.receive_output(timeout=2) == {"type": "websocket.send", "text": text}


@pytest.mark.parametrize("data", [b"\x00\x01\xfe\xff", b"", "text as bytes ✓".encode(), bytes(range(256))])
async def test_binary_frames_are_echoed_as_binary(client: WebsocketCommunicator, data: bytes) -> None:
    await client.send_input({"type": "websocket.receive", "bytes": data})
    assert await client.receive_output(timeout=2) == {"type": "websocket.send", "bytes": data}


async def test_the_root_path_serves_the_same_echo_for_the_original_page() -> None:
    communicator = WebsocketCommunicator(application, "/", headers=[ORIGIN])
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="*")
    assert await communicator.receive_from(timeout=2) == "*"
    await communicator.disconnect()


async def test_joins_the_broadcast_group_on_connect_and_leaves_on_disconnect(layer) -> None:
    assert layer.local_member_count(BROADCAST_GROUP) == 0
    communicator = WebsocketCommunicator(application, "/ws/echo/", headers=[ORIGIN])
    await communicator.connect()
    assert layer.local_member_count(BROADCAST_GROUP) == 1
    await communicator.disconnect()
    assert layer.local_member_count(BROADCAST_GROUP) == 0


async def test_a_pushed_message_reaches_every_socket_through_redis(layer) -> None:
    first = WebsocketCommunicator(application, "/ws/echo/", headers=[ORIGIN])
    second = WebsocketCommunicator(application, "/", headers=[ORIGIN])
    await first.connect()
    await second.connect()
    seq = await Publisher().publish("prices", {"price": 101.25, "volume": 3})
    texts = [await first.receive_from(timeout=2), await second.receive_from(timeout=2)]
    assert texts[0] == texts[1]  # the very same text, relayed unchanged
    frame = json.loads(texts[0])
    assert frame["type"] == "data"
    assert frame["topic"] == "prices"
    assert frame["seq"] == seq == 1
    assert isinstance(frame["ts"], float)
    assert frame["values"] == {"price": 101.25, "volume": 3}
    assert layer.stats.received >= 1  # it came back from Redis, not a local shortcut
    await first.disconnect()
    await second.disconnect()


async def test_publish_from_sync_code_reaches_the_socket() -> None:
    communicator = WebsocketCommunicator(application, "/ws/echo/", headers=[ORIGIN])
    await communicator.connect()
    # Sync callers (views, scripts) run in threads without a loop; publish() must not need one.
    seqs = await asyncio.to_thread(lambda: [broadcast.publish("sync-test", {"v": i}) for i in range(3)])
    frames = [json.loads(await communicator.receive_from(timeout=2)) for _ in range(3)]
    assert [f["values"]["v"] for f in frames] == [0, 1, 2]
    assert [f["seq"] for f in frames] == seqs
    assert seqs[1] == seqs[0] + 1 and seqs[2] == seqs[1] + 1
    await communicator.disconnect()


async def test_publish_from_async_code_is_refused_by_the_sync_function() -> None:
    with pytest.raises(RuntimeError, match="apublish"):
        broadcast.publish("prices", {"price": 1})


async def test_a_client_cannot_publish_to_others() -> None:
    sender = WebsocketCommunicator(application, "/ws/echo/", headers=[ORIGIN])
    bystander = WebsocketCommunicator(application, "/ws/echo/", headers=[ORIGIN])
    await sender.connect()
    await bystander.connect()
    forged = json.dumps({"type": "relay.frame", "text": "forged"})
    forged_data = json.dumps({"type": "data", "topic": "prices", "seq": 1, "ts": 0, "values": {"p": 1}})
    for text in (forged, forged_data):
        await sender.send_to(text_data=text)
        assert await sender.receive_from(timeout=2) == text  # only echoed to its sender
    assert await bystander.receive_nothing(timeout=0.5)
    await sender.disconnect()
    await bystander.disconnect()


@pytest.mark.parametrize(
    "origin",
    [b"http://evil.example", b"https://localhost.evil.example", b"null", b"http://127.0.0.2:8000"],
)
async def test_a_foreign_origin_is_refused(origin: bytes) -> None:
    communicator = WebsocketCommunicator(application, "/ws/echo/", headers=[(b"origin", origin)])
    connected, _ = await communicator.connect()
    assert not connected


async def test_a_handshake_without_origin_is_not_a_browser_and_is_served() -> None:
    communicator = WebsocketCommunicator(application, "/ws/echo/")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="cli")
    assert await communicator.receive_from(timeout=2) == "cli"
    await communicator.disconnect()
