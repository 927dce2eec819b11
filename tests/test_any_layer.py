"""The consumer on channels-redis' layers: echo and live data through plain ``group_send``, and a clear
answer (a warning frame, a reset) for what needs this project's layer (history, since, presence)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
import websockets
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from echo.layer.redis_target import parse_redis_url
from echo.publishing.broadcast import Publisher
from tests.helpers.clients import data_frames
from tests.helpers.processes import ROOT, http_get, spawn, start_server, stop, timeout
from wsproject.asgi import application

ORIGIN = [(b"origin", b"http://localhost:8000")]
CHANNELS_REDIS_LAYERS = [
    "channels_redis.pubsub.RedisPubSubChannelLayer",
    "channels_redis.core.RedisChannelLayer",
]


def layers_setting(backend: str, redis_url: str | None = None) -> dict:
    hosts = parse_redis_url(redis_url or os.environ["REDIS_URL"]).channels_redis_hosts()
    return {
        "default": {
            "BACKEND": backend,
            "CONFIG": {"hosts": hosts, "prefix": "wsdemo-any-" + uuid.uuid4().hex[:8]},
        }
    }


async def texts(communicator: WebsocketCommunicator, count: int) -> list[str]:
    got = []
    for _ in range(count):
        got.append((await communicator.receive_output(timeout=timeout(5)))["text"])
    return got


@pytest.mark.parametrize("backend", CHANNELS_REDIS_LAYERS)
async def test_echo_and_live_data_work_on_channels_redis(backend: str, topic: str) -> None:
    await echo_and_live_data(layers_setting(backend), topic)


@pytest.mark.parametrize("backend", CHANNELS_REDIS_LAYERS)
async def test_channels_redis_follows_a_sentinel_service_named_in_redis_url(
    backend: str, topic: str, redis_sentinel
) -> None:
    """``redis+sentinel://`` is handed to channels-redis in its own host format, and it works."""
    await echo_and_live_data(layers_setting(backend, redis_sentinel.url), topic)


def test_channels_redis_with_a_cluster_url_is_refused_in_one_line() -> None:
    env = {**os.environ, "REDIS_URL": "redis+cluster://127.0.0.1:7000"}
    env["CHANNEL_LAYER_BACKEND"] = "channels_redis.core.RedisChannelLayer"
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "manage.py: REDIS_URL: channels-redis cannot use a Redis Cluster (multi-key scripts, unsharded "
        "pub/sub); use this project's layer (unset CHANNEL_LAYER_BACKEND)"
    ]


async def echo_and_live_data(layers: dict, topic: str) -> None:
    with override_settings(CHANNEL_LAYERS=layers):
        client = WebsocketCommunicator(application, f"/ws/echo/?topics={topic}&history=0", headers=ORIGIN)
        connected, _ = await client.connect()
        assert connected
        await client.send_to(text_data="hello")
        assert await texts(client, 1) == ["hello"]
        await client.send_to(bytes_data=b"\x00\x01")
        assert (await client.receive_output(timeout=timeout(5)))["bytes"] == b"\x00\x01"
        position = await Publisher().publish(topic, {"price": 1.5})
        (frame,) = data_frames((await texts(client, 1))[0])
        assert (frame["type"], frame["topic"], frame["values"]) == ("data", topic, {"price": 1.5})
        assert "seq" not in frame and "epoch" not in frame and position == (None, 0)
        await client.disconnect()


@pytest.mark.parametrize("backend", CHANNELS_REDIS_LAYERS)
async def test_history_and_since_get_a_clear_answer_on_a_layer_without_history(
    backend: str, topic: str
) -> None:
    with override_settings(CHANNEL_LAYERS=layers_setting(backend)):
        path = f"/ws/echo/?topics={topic}&history=10&since={topic}:4:3f9a2c1b"
        client = WebsocketCommunicator(application, path, headers=ORIGIN)
        connected, _ = await client.connect()
        assert connected
        frames = data_frames((await texts(client, 1))[0])
        assert [(f["type"], f.get("code"), f.get("epoch")) for f in frames] == [
            ("reset", None, None),
            ("warning", "no_history", None),
        ]
        # The connection carries on: live data still arrives.
        await Publisher().publish(topic, {"v": 2})
        (frame,) = data_frames((await texts(client, 1))[0])
        assert frame["values"] == {"v": 2}
        await client.disconnect()


@pytest.mark.slow
async def test_push_data_reaches_a_real_server_running_on_redis_pubsub_layer(
    server_env: dict[str, str], topic: str
) -> None:
    env = {**server_env, "CHANNEL_LAYER_BACKEND": CHANNELS_REDIS_LAYERS[0]}
    command = [sys.executable, "manage.py", "runserver", "127.0.0.1:0", "--noreload"]
    with start_server(command, env) as server:
        url = server.ws_url(f"/ws/echo/?topics={topic}")
        async with websockets.connect(url, origin=server.origin) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
            assert (first["type"], first["code"]) == ("warning", "no_history")  # the page asks for history
            pusher = spawn([sys.executable, "manage.py", "push_data", "--topic", topic, "--count", "3"], env)
            got: list[dict] = []
            while len(got) < 3:
                got += [
                    f
                    for f in data_frames(await asyncio.wait_for(ws.recv(), timeout(10)))
                    if f["type"] == "data"
                ]
            assert await asyncio.to_thread(pusher.wait, timeout(20)) == 0
        stop(pusher)
        # The probes and the topics API answer plainly on this layer too.
        assert (await asyncio.to_thread(http_get, server.http_url("/healthz")))[0] == 200
        status, body = await asyncio.to_thread(http_get, server.http_url("/api/topics"))
        assert (status, json.loads(body)) == (200, {"topics": []})
    assert [f["topic"] for f in got] == [topic] * 3
    output = server.output.text()
    assert "keeps no history" in output  # said once, at the first connection
    assert "Traceback" not in output


async def test_max_rate_on_a_layer_that_cannot_pace_gets_a_warning_and_every_frame(topic: str) -> None:
    with override_settings(CHANNEL_LAYERS=layers_setting(CHANNELS_REDIS_LAYERS[0])):
        client = WebsocketCommunicator(
            application, f"/ws/echo/?topics={topic}&history=0&max_rate=1", headers=ORIGIN
        )
        connected, _ = await client.connect()
        assert connected
        (warning,) = data_frames((await texts(client, 1))[0])
        assert (warning["type"], warning["code"]) == ("warning", "no_max_rate")
        for value in range(3):
            await Publisher().publish(topic, {"v": value})
        received = [data_frames(text)[0]["values"]["v"] for text in await texts(client, 3)]
        assert received == [0, 1, 2]
        await client.disconnect()
