"""A publish whose answer is lost, retried, is one message: idempotency keys against a real Redis.

Between the publisher and Redis sits a small TCP proxy that, when asked, lets the numbering script
through to Redis and then cuts the connection instead of passing its answer back: Redis numbered and
published the message, the publisher saw "connection closed" and publishes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from echo.layer.channel_layer import RedisFanoutChannelLayer
from echo.protocol import topic_group
from echo.publishing.broadcast import Publisher, new_idempotency_key
from echo.publishing.pump import Pump
from tests.helpers.processes import Server, timeout
from tests.helpers.publishing import create_key, request


class AnswerCutter:
    """A TCP proxy to Redis that can drop the answer to the next script run and cut the connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.armed = False
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection(*self.target)
        script_sent = asyncio.Event()

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                if self.armed and (b"EVALSHA" in data or b"EVAL" in data):
                    self.armed = False
                    script_sent.set()
                redis_writer.write(data)
                await redis_writer.drain()

        async def downstream() -> None:
            while data := await redis_reader.read(65536):
                if script_sent.is_set():  # Redis ran it: its answer goes nowhere
                    self.cuts += 1
                    return
                client_writer.write(data)
                await client_writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_writer, redis_writer):
                writer.transport.abort()


@pytest.fixture
async def cutter() -> AsyncIterator[tuple[AnswerCutter, str]]:
    """The proxy, and a Redis URL through it (the test session's database)."""
    url = urlsplit(os.environ["REDIS_URL"])
    proxy = AnswerCutter((url.hostname or "127.0.0.1", url.port or 6379))
    port = await proxy.start()
    netloc = f"{url.username or ''}{':' + url.password if url.password else ''}"
    netloc = f"{netloc}@127.0.0.1:{port}" if netloc else f"127.0.0.1:{port}"
    yield proxy, urlunsplit((url.scheme, netloc, url.path, url.query, ""))
    await proxy.stop()


async def published_through(layer: RedisFanoutChannelLayer, topic: str) -> list[tuple[int, str]]:
    """The topic's stored messages (each published message is stored once, before it is published)."""
    return (await layer.group_history(topic_group(topic), last=100)).entries


async def one_message(values: dict[str, float]) -> AsyncIterator[dict[str, float]]:
    yield values


async def test_a_retried_publish_whose_answer_was_lost_is_one_message(
    cutter: tuple[AnswerCutter, str], topic: str
) -> None:
    proxy, url = cutter
    layer = RedisFanoutChannelLayer([url], prefix=f"idem-{uuid.uuid4().hex[:8]}")
    publisher = Publisher(layer)
    # Without a key (as before): the retry is a second message under the next seq.
    proxy.armed = True
    try:
        await publisher.publish(topic, {"price": 1.0})
    except Exception as lost:  # redis-py may retry by itself, and succeed
        assert proxy.cuts == 1, lost
        await publisher.publish(topic, {"price": 1.0})
    assert proxy.cuts == 1
    assert len(await published_through(layer, topic)) == 2
    # With one key for both attempts: one message, and both answers give its position.
    proxy.armed = True
    key = new_idempotency_key()
    first = None
    with contextlib.suppress(Exception):  # the cut surfaces as whatever redis-py raises, if it does
        first = await publisher.publish(topic, {"price": 2.0}, idempotency_key=key)
    assert proxy.cuts == 2
    again = await publisher.publish(topic, {"price": 2.0}, idempotency_key=key)
    stored = await published_through(layer, topic)
    assert [seq for seq, _ in stored] == [1, 2, 3] and again.seq == 3
    assert first is None or first == again
    await layer.flush()


async def test_push_data_retries_with_the_messages_key_and_publishes_it_once(
    cutter: tuple[AnswerCutter, str], topic: str
) -> None:
    proxy, url = cutter
    layer = RedisFanoutChannelLayer([url], prefix=f"idem-{uuid.uuid4().hex[:8]}")
    pump = Pump(Publisher(layer), topic, url)
    proxy.armed = True
    await asyncio.wait_for(pump.run(one_message({"price": 3.0}), count=1), timeout(20))
    assert proxy.cuts == 1 and pump.sent == 1
    stored = await published_through(layer, topic)
    assert [seq for seq, _ in stored] == [1] and pump.last is not None and pump.last.seq == 1
    await layer.flush()


async def test_the_publish_api_answers_a_repeated_idempotency_key_with_the_first_position(
    production_server: Server, topic: str
) -> None:
    key = create_key()
    path = f"/api/publish/{topic}"
    sent = [
        await asyncio.to_thread(
            request, production_server, path, {"v": 1}, key=key, headers={"Idempotency-Key": "a1"}
        )
        for _ in range(2)
    ]
    other = await asyncio.to_thread(
        request, production_server, path, {"v": 1}, key=key, headers={"Idempotency-Key": "a2"}
    )
    assert [answer.status for answer in sent] == [200, 200], production_server.output.text()[-3000:]
    assert sent[0].json == sent[1].json and other.json["seq"] == sent[0].json["seq"] + 1
    batch = {"messages": [{"topic": topic, "values": {"v": n}} for n in range(3)]}
    first, again = [
        await asyncio.to_thread(
            request, production_server, "/api/publish", batch, key=key, headers={"Idempotency-Key": "b"}
        )
        for _ in range(2)
    ]
    assert first.json == again.json
    assert [p["seq"] for p in first.json["published"]] == [other.json["seq"] + n for n in (1, 2, 3)]
    bad = await asyncio.to_thread(
        request, production_server, path, {"v": 1}, key=key, headers={"Idempotency-Key": "x" * 101}
    )
    assert bad.error() == (400, "bad_idempotency_key")
