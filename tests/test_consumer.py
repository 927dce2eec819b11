"""The consumer, driven through the real ASGI application with WebsocketCommunicator and a real Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
from channels.testing import WebsocketCommunicator

from echo.consumers import EchoConsumer
from echo.protocol import DEFAULT_TOPIC, topic_group
from echo.publishing import broadcast
from echo.publishing.broadcast import Publisher
from tests.helpers.clients import data_frames
from wsproject.asgi import application

ORIGIN = (b"origin", b"http://localhost:8000")


def without_presence(output: dict) -> dict | None:
    """``output`` with presence frames (which come on their own schedule) removed; None if nothing is left.

    Relayed frames that queued up together arrive newline-joined in one text frame.
    """
    text = output.get("text")
    if text is None or not text.startswith("{"):
        return output
    kept = [line for line in text.split("\n") if not line.startswith('{"type":"presence"')]
    return {**output, "text": "\n".join(kept)} if kept else None


async def next_output(communicator: WebsocketCommunicator, seconds: float = 5) -> dict:
    """The next thing the consumer sends, leaving out presence frames."""
    while True:
        output = without_presence(await communicator.receive_output(timeout=seconds))
        if output is not None:
            return output


async def next_text(communicator: WebsocketCommunicator, seconds: float = 5) -> str:
    output = await next_output(communicator, seconds)
    assert output["type"] == "websocket.send", output
    return output["text"]


async def nothing_but_presence(communicator: WebsocketCommunicator, seconds: float = 0.5) -> bool:
    """True if the consumer sends nothing but presence frames within ``seconds``.

    (receive_output would cancel the application when it times out; receive_nothing does not.)
    """
    while not await communicator.receive_nothing(timeout=seconds):
        if without_presence(await communicator.receive_output()) is not None:
            return False
    return True


@pytest.fixture
async def client() -> AsyncIterator[WebsocketCommunicator]:
    communicator = WebsocketCommunicator(application, "/ws/echo/?history=0", headers=[ORIGIN])
    connected, _ = await communicator.connect()
    assert connected
    yield communicator
    await communicator.disconnect()


@pytest.mark.parametrize("text", ["*", "hello", "héllo wörld ✓ 漢字 🚀", "", "x" * 65536])
async def test_text_frames_are_echoed_verbatim(client: WebsocketCommunicator, text: str) -> None:
    # send_input, because WebsocketCommunicator.send_to refuses empty frames.
    await client.send_input({"type": "websocket.receive", "text": text})
    assert await next_output(client) == {"type": "websocket.send", "text": text}


@pytest.mark.parametrize("data", [b"\x00\x01\xfe\xff", b"", "text as bytes ✓".encode(), bytes(range(256))])
async def test_binary_frames_are_echoed_as_binary(client: WebsocketCommunicator, data: bytes) -> None:
    await client.send_input({"type": "websocket.receive", "bytes": data})
    assert await next_output(client) == {"type": "websocket.send", "bytes": data}


async def test_the_root_path_serves_the_same_echo_for_the_original_page() -> None:
    communicator = WebsocketCommunicator(application, "/?history=0", headers=[ORIGIN])
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="*")
    assert await next_text(communicator) == "*"
    await communicator.disconnect()


async def test_joins_the_default_topic_on_connect_and_leaves_on_disconnect(layer) -> None:
    group = topic_group(DEFAULT_TOPIC)
    assert layer.local_member_count(group) == 0
    communicator = WebsocketCommunicator(application, "/ws/echo/?history=0", headers=[ORIGIN])
    await communicator.connect()
    assert layer.local_member_count(group) == 1
    await communicator.disconnect()
    assert layer.local_member_count(group) == 0


async def test_a_pushed_message_reaches_every_socket_through_redis(layer, topic) -> None:
    first = WebsocketCommunicator(application, f"/ws/echo/?topics={topic}&history=0", headers=[ORIGIN])
    second = WebsocketCommunicator(application, f"/?topics={topic}&history=0", headers=[ORIGIN])
    await first.connect()
    await second.connect()
    received_before = layer.stats.received
    position = await Publisher().publish(topic, {"price": 101.25, "volume": 3})
    texts = [await next_text(first), await next_text(second)]
    assert texts[0] == texts[1]  # the very same text, relayed unchanged
    frame = json.loads(texts[0])
    assert frame["type"] == "data"
    assert frame["topic"] == topic
    assert (frame["epoch"], frame["seq"]) == position and position.seq == 1
    assert isinstance(frame["ts"], float)
    assert frame["values"] == {"price": 101.25, "volume": 3}
    assert layer.stats.received > received_before  # it came back from Redis, not a local shortcut
    await first.disconnect()
    await second.disconnect()


async def test_publish_from_sync_code_reaches_the_socket(topic) -> None:
    communicator = WebsocketCommunicator(application, f"/ws/echo/?topics={topic}&history=0", headers=[ORIGIN])
    await communicator.connect()
    # Sync callers (views, scripts) run in threads without a loop; publish() must not need one.
    seqs = await asyncio.to_thread(lambda: [broadcast.publish(topic, {"v": i}) for i in range(3)])
    frames: list[dict] = []
    while len(frames) < 3:  # frames that queued up together arrive batched in one text frame
        frames += data_frames(await next_text(communicator))
    assert [f["values"]["v"] for f in frames] == [0, 1, 2]
    assert [(f["epoch"], f["seq"]) for f in frames] == seqs
    assert seqs[1].seq == seqs[0].seq + 1 and seqs[2].seq == seqs[1].seq + 1
    await communicator.disconnect()


async def test_publish_from_async_code_is_refused_by_the_sync_function() -> None:
    with pytest.raises(RuntimeError, match="apublish"):
        broadcast.publish("prices", {"price": 1})


async def test_a_client_cannot_publish_to_others() -> None:
    sender = WebsocketCommunicator(application, "/ws/echo/?history=0", headers=[ORIGIN])
    bystander = WebsocketCommunicator(application, "/ws/echo/?history=0", headers=[ORIGIN])
    await sender.connect()
    await bystander.connect()
    forged = json.dumps({"type": "relay.frame", "text": "forged"})
    forged_data = json.dumps({"type": "data", "topic": "prices", "seq": 1, "ts": 0, "values": {"p": 1}})
    for text in (forged, forged_data):
        await sender.send_to(text_data=text)
        assert await next_text(sender) == text  # only echoed to its sender
    assert await nothing_but_presence(bystander)
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
    communicator = WebsocketCommunicator(application, "/ws/echo/?history=0")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="cli")
    assert await next_text(communicator) == "cli"
    await communicator.disconnect()


async def test_closing_a_socket_the_server_already_closed_is_quiet() -> None:
    """The production server closes a stalled client itself (1013); the layer's overflow may follow.

    uvicorn refuses a second close with a RuntimeError (its message below): the consumer must take
    that as "already closed", not fail the connection with a traceback.
    """
    from echo.consumers import EchoConsumer

    sent: list[dict] = []

    async def uvicorn_like_send(message: dict) -> None:
        if any(m["type"] == "websocket.close" for m in sent):
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}', after sending 'websocket.close'."
            )
        sent.append(message)

    consumer = EchoConsumer()
    consumer.scope, consumer.base_send = (
        {"type": "websocket", "client": ("198.51.100.7", 1)},
        uvicorn_like_send,
    )
    sent.append({"type": "websocket.close", "code": 1013})  # what the server did by itself
    await consumer.layer_overflow({"type": "layer.overflow", "dropped": 5})
    await consumer.close(code=1000)
    assert consumer.closing and sent == [{"type": "websocket.close", "code": 1013}]


async def test_a_project_using_auth_middleware_stack_has_its_scope_user_checked(layer: object) -> None:
    """A project that wraps the consumer in Channels' AuthMiddlewareStack: the scope's user decides."""
    from channels.auth import AuthMiddlewareStack
    from django.contrib.auth.models import AnonymousUser, User

    from echo.consumers import EchoConsumer

    owner = await User.objects.acreate(username="stack-" + uuid.uuid4().hex[:10])
    app = AuthMiddlewareStack(EchoConsumer.as_asgi())
    topic = f"user-{owner.pk}"
    for user, allowed in ((AnonymousUser(), False), (owner, True)):
        communicator = WebsocketCommunicator(app, f"/ws/echo/?topics={topic}&history=0", headers=[ORIGIN])
        communicator.scope["user"] = user  # as AuthMiddlewareStack leaves it after reading the session
        connected, _ = await communicator.connect()
        assert connected
        if allowed:
            await communicator.send_to(text_data="*")
            assert await next_text(communicator) == "*"
        else:
            frame = json.loads(await next_text(communicator))
            assert frame["code"] == "forbidden"
            assert (await communicator.receive_output())["code"] == 3003
        await communicator.disconnect()


def test_as_asgi_keeps_channels_attributes_and_holds_no_frame_of_its_own() -> None:
    import inspect

    from echo.consumers import EchoConsumer

    app = EchoConsumer.as_asgi()
    assert app.consumer_class is EchoConsumer and app.consumer_initkwargs == {}
    assert app.__name__ == "EchoConsumer" and app.__doc__ == EchoConsumer.__doc__
    assert not inspect.iscoroutinefunction(app)  # returns the consumer's coroutine instead of awaiting it


async def test_consumers_opened_at_once_keep_the_attribute_dict_of_one_made_alone() -> None:
    """Every attribute is set in ``__init__``: CPython shares one table of attribute names among a
    class's instances but stops adding names to it as instances are made, so a name first set after
    an await, while many connect at once, gives each consumer a dict of its own (400 bytes more)."""
    clients = [WebsocketCommunicator(application, "/ws/echo/?history=0", headers=[ORIGIN]) for _ in range(64)]
    try:
        assert all(connected for connected, _ in await asyncio.gather(*(c.connect() for c in clients)))
        consumers = [o for o in gc.get_objects() if type(o) is EchoConsumer and o.joined]
        assert len(consumers) >= len(clients)
        alone = sys.getsizeof(vars(EchoConsumer()))
        assert max(sys.getsizeof(vars(consumer)) for consumer in consumers) <= alone
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients))
