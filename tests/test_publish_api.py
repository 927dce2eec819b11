"""The HTTP publish API end to end: real server processes, real Redis, the real database, keys made with
``manage.py api_key``, and WebSocket clients of the `websockets` library receiving what was published."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid

import pytest
from channels.layers import InMemoryChannelLayer

from echo.access.apikeys import KeyRateLimit
from echo.models import ApiKey
from scripts import devenv
from scripts.redis_server import RedisServer
from tests.helpers.clients import next_data, watch
from tests.helpers.processes import SERVER_COMMANDS, Server, spawn, start_server, timeout
from tests.helpers.publishing import api_key, create_key, publish, publish_batch, request, unique_name


async def test_a_published_message_reaches_websocket_clients_at_its_position(
    any_server: Server, topic: str
) -> None:
    key = await asyncio.to_thread(create_key)
    ws = await watch(any_server, topic)
    async with ws:
        answer = await asyncio.to_thread(publish, any_server, topic, {"price": 101.25, "volume": 7}, key)
        assert answer.status == 200
        position = answer.json
        assert set(position) == {"topic", "epoch", "seq"} and position["topic"] == topic
        assert position["seq"] == 1 and position["epoch"]
        (frame,) = await next_data(ws, 1)
        assert (frame["topic"], frame["epoch"], frame["seq"]) == (topic, position["epoch"], 1)
        assert frame["values"] == {"price": 101.25, "volume": 7}

        # What one stdin line of push_data takes, the body takes: a bare number is series "value".
        answer = await asyncio.to_thread(publish, any_server, topic, "  3.5\n", key)
        assert answer.json == {"topic": topic, "epoch": position["epoch"], "seq": 2}
        (frame,) = await next_data(ws, 1)
        assert (frame["seq"], frame["values"]) == (2, {"value": 3.5})

        # One numbering with push_data: its message on the same topic is the next one.
        pusher = spawn(
            [sys.executable, "manage.py", "push_data", "--count", "1", "--topic", topic], os.environ
        )
        (frame,) = await next_data(ws, 1)
        assert (frame["epoch"], frame["seq"]) == (position["epoch"], 3) and "price" in frame["values"]
        assert await asyncio.to_thread(pusher.wait, timeout(15)) == 0
        answer = await asyncio.to_thread(publish, any_server, topic, {"price": 1}, key)
        assert answer.json["seq"] == 4


async def test_a_batch_is_published_in_order_across_topics(any_server: Server) -> None:
    first, second = (f"t-{uuid.uuid4().hex[:12]}" for _ in range(2))
    key = await asyncio.to_thread(create_key)
    messages = [
        {"topic": first, "values": {"a": 1}},
        {"topic": second, "values": {"b": 2.5}},
        {"topic": first, "values": {"a": 3, "c": -1e-3}},
    ]
    async with await watch(any_server, first, second) as ws:
        answer = await asyncio.to_thread(publish_batch, any_server, messages, key)
        assert answer.status == 200
        published = answer.json["published"]
        assert [(p["topic"], p["seq"]) for p in published] == [(first, 1), (second, 1), (first, 2)]
        frames = await next_data(ws, 3)
    received = {(f["topic"], f["epoch"], f["seq"]): f["values"] for f in frames}
    assert received == {
        (p["topic"], p["epoch"], p["seq"]): m["values"] for p, m in zip(published, messages, strict=True)
    }
    # Each topic's frames arrive in the batch's order.
    assert [f["seq"] for f in frames if f["topic"] == first] == [1, 2]


async def test_every_refusal_has_its_status_and_a_json_error(any_server: Server, topic: str) -> None:
    server = any_server
    limited = await asyncio.to_thread(create_key, f"{topic}-allowed,{topic}-other-*")
    allowed = f"{topic}-allowed"

    def check() -> None:
        # 401: no key, another scheme, an unknown key; each with the challenge.
        for answer in (
            publish(server, allowed, {"a": 1}, key=None),  # type: ignore[arg-type]
            request(server, f"/api/publish/{allowed}", {"a": 1}, headers={"Authorization": "Basic eDp5"}),
            publish(server, allowed, {"a": 1}, key="ek_" + "x" * 43),
            publish_batch(server, [{"topic": allowed, "values": {"a": 1}}], key="ek_not-a-key"),
        ):
            assert answer.error() == (401, "unauthorized")
            assert answer.headers["www-authenticate"].startswith("Bearer")
        # 403: a topic outside the key's patterns; in a batch, the whole batch is refused.
        assert publish(server, "prices", {"a": 1}, limited).error() == (403, "forbidden")
        mixed = [{"topic": allowed, "values": {"a": 1}}, {"topic": f"{topic}-elsewhere", "values": {"a": 2}}]
        assert publish_batch(server, mixed, limited).error() == (403, "forbidden")
        # 400: not JSON, not numbers, a bad topic, a bad batch; a bad batch publishes none of it.
        for body, code in [
            (b"{not json", "bad_json"),
            (b"\xff\xfe", "bad_json"),
            ([1, 2], "bad_values"),
            ('"text"', "bad_values"),
            ({"a": "1"}, "bad_values"),
            ({"a": True}, "bad_values"),
            ({"a": {"b": 1}}, "bad_values"),
            ({}, "bad_values"),
            ("NaN", "bad_values"),
            ("1" * 5000, "bad_json"),  # JSON, but more digits than Python reads
            ('{"a": 1' + "0" * 400 + "}", "bad_values"),
            ("[" * 100_000, "bad_json"),
            ({"bad name": 1}, "bad_values"),
            ({f"s{n}": n for n in range(33)}, "bad_values"),
        ]:
            assert request(server, f"/api/publish/{allowed}", body, key=limited).error() == (400, code), body
        for bad_topic in ("Prices", "a" * 49, "-x", "a%2Fb", "a/b", "caf%C3%A9"):
            assert request(server, f"/api/publish/{bad_topic}", {"a": 1}, key=limited).error() == (
                400,
                "bad_topic",
            )
        good = {"topic": allowed, "values": {"a": 1}}
        for batch, code in [
            (b"[", "bad_json"),
            ([good], "bad_batch"),
            ({"messages": []}, "bad_batch"),
            ({"messages": [good] * 1001}, "bad_batch"),
            ({"messages": [good], "extra": 1}, "bad_batch"),
            ({"messages": [good, {"topic": allowed}]}, "bad_batch"),
            ({"messages": [good, {"topic": "Nope", "values": {"a": 1}}]}, "bad_topic"),
            ({"messages": [good, {"topic": allowed, "values": {"a": float("inf")}}]}, "bad_values"),
            ({"messages": [good, {"topic": allowed, "values": {"a": 10**400}}]}, "bad_values"),
            ({"messages": [good, {"topic": allowed, "values": 5}]}, "bad_values"),
        ]:
            assert request(server, "/api/publish", batch, key=limited).error() == (400, code), batch
        # 413: by Content-Length, and by the length actually sent (chunked: no Content-Length).
        big = {"a": 1, "pad": 0, "x": "y" * (256 * 1024)}
        assert request(server, f"/api/publish/{allowed}", big, key=limited).error() == (413, "too_large")
        chunks = [b'{"a": 1, "b": "' + b"y" * 1024] + [b"y" * 1024] * 300 + [b'"}']
        answer = request(server, f"/api/publish/{allowed}", key=limited, chunks=chunks)
        assert answer.error() == (413, "too_large")
        # 405: any other method, saying which one is allowed.
        for path in (f"/api/publish/{allowed}", "/api/publish"):
            for method in ("GET", "PUT", "DELETE"):
                answer = request(server, path, key=limited, method=method)
                assert answer.error() == (405, "method_not_allowed") and answer.headers["allow"] == "POST"
        # Nothing refused was published: the topic's first message is still seq 1.
        assert publish(server, allowed, {"a": 1}, limited).json["seq"] == 1
        assert publish(server, f"{topic}-other-1", {"a": 1}, limited).json["seq"] == 1

    await asyncio.to_thread(check)


async def test_api_keys_never_appear_in_the_server_log(any_server: Server, topic: str) -> None:
    key = await asyncio.to_thread(create_key, f"{topic}*")
    wrong = "ek_" + uuid.uuid4().hex * 2

    def requests() -> None:
        assert publish(any_server, topic, {"a": 1}, key).status == 200
        assert publish(any_server, "prices", {"a": 1}, key).status == 403
        assert publish(any_server, topic, "not json", key).status == 400
        assert request(any_server, f"/api/publish/{topic}", method="GET", key=key).status == 405
        assert publish(any_server, topic, {"a": 1}, wrong).status == 401
        assert request(any_server, f"/api/publish/{topic}", {"x": "y" * 300_000}, key=key).status == 413

    await asyncio.to_thread(requests)
    # Django logs each refusal with its path: the log was captured, and holds neither key.
    any_server.output.wait_for(r"Unauthorized: /api/publish/")
    any_server.output.wait_for(r"Forbidden: /api/publish/prices")
    log = any_server.output.text()
    assert key not in log and key[3:] not in log and wrong[3:] not in log
    assert "Traceback" not in log


async def test_a_revoked_key_is_refused(production_server: Server, topic: str) -> None:
    name = unique_name()
    key = await asyncio.to_thread(create_key, "*", name)
    assert (await asyncio.to_thread(publish, production_server, topic, {"a": 1}, key)).status == 200
    assert (await asyncio.to_thread(api_key, "revoke", name)).returncode == 0
    answer = await asyncio.to_thread(publish, production_server, topic, {"a": 1}, key)
    assert answer.error() == (401, "unauthorized")


async def test_the_rate_limit_is_per_key_counts_batches_and_is_shared_by_every_process(
    server_env: dict[str, str], topic: str
) -> None:
    env = {**server_env, "API_RATE_LIMIT": "2"}
    first_key, second_key, third_key = [await asyncio.to_thread(create_key) for _ in range(3)]
    two = [{"topic": topic, "values": {"n": n}} for n in range(2)]
    with (
        start_server(SERVER_COMMANDS["production"], env) as production,
        start_server(SERVER_COMMANDS["runserver"], env) as runserver,
    ):

        def check() -> None:
            # Two messages in a batch take the key's whole second: the next batch waits (for 1 s).
            assert publish_batch(production, two, first_key).status == 200
            refused = publish_batch(production, two, first_key)
            assert refused.error() == (429, "rate_limited")
            assert refused.headers["retry-after"] == "1"
            # Another key is not affected.
            assert publish(production, topic, {"n": 0}, second_key).status == 200
            # A batch bigger than the limit goes through when the key has its whole second, and the key
            # then waits for all of it, on every server process: 20 messages at 2/s, about 10 s.
            assert publish_batch(runserver, two * 10, third_key).status == 200
            for server in (production, runserver):
                refused = publish(server, topic, {"n": 0}, third_key)
                assert refused.error() == (429, "rate_limited")
                assert 8 <= int(refused.headers["retry-after"]) <= 10

        await asyncio.to_thread(check)


async def test_the_per_process_limit_on_other_layers_decides_as_the_shared_one(layer: object) -> None:
    """Same rule in the Lua script and in Python: the same answers for the same requests."""
    for checked_layer in (layer, InMemoryChannelLayer()):
        limit = KeyRateLimit()
        key = ApiKey(pk=random.randrange(10**9, 10**12), name="rate-rule", digest=uuid.uuid4().hex)
        first = await limit.check(checked_layer, key, 4, rate=4)
        second = await limit.check(checked_layer, key, 1, rate=4)
        assert (first.allowed, second.allowed, second.retry_after) == (True, False, 1), checked_layer
        other = ApiKey(pk=key.pk + 1, name="rate-rule-2", digest=uuid.uuid4().hex)
        big = await limit.check(checked_layer, other, 40, rate=4)
        after = await limit.check(checked_layer, other, 1, rate=4)
        assert big.allowed and not after.allowed and 9 <= after.retry_after <= 10, checked_layer
        assert (await limit.check(checked_layer, other, 1, rate=0)).allowed  # 0: no limit


async def test_redis_unreachable_is_503_and_publishing_resumes_when_it_is_back(
    server_env: dict[str, str], topic: str
) -> None:
    redis = RedisServer()
    redis.start()
    key = await asyncio.to_thread(create_key)
    try:
        with start_server(
            devenv.production_command("127.0.0.1", "0"), {**server_env, "REDIS_URL": redis.url}
        ) as server:
            assert (await asyncio.to_thread(publish, server, topic, {"a": 1}, key)).json["seq"] == 1
            redis.stop()
            answer = await asyncio.to_thread(publish, server, topic, {"a": 2}, key)
            assert answer.error() == (503, "unavailable") and answer.headers["retry-after"] == "1"
            redis.start()  # same port, empty: a new epoch
            async with asyncio.timeout(timeout(15)):
                while (
                    answer := await asyncio.to_thread(publish, server, topic, {"a": 3}, key)
                ).status != 200:
                    assert answer.error() == (503, "unavailable")
            assert answer.json["seq"] == 1
            assert "Traceback" not in server.output.text()
    finally:
        redis.stop()


@pytest.mark.parametrize("path", ["/api/publish/prices", "/api/publish"])
async def test_the_api_needs_no_csrf_token_or_cookie(production_server: Server, path: str) -> None:
    """Browsers' forms cannot carry a bearer key, so the API is exempt from CSRF, and says 401 without it."""
    answer = await asyncio.to_thread(
        request, production_server, path, {"a": 1}, headers={"Origin": "http://evil.example"}
    )
    assert answer.error() == (401, "unauthorized")
