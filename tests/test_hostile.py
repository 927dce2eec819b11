"""Hostile input against the real server processes: each gets its RFC 6455 close code (or an error
frame), a log line and a count, while the process stays up and other clients are unaffected."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts import devenv
from tests.helpers.clients import data_frames, next_echo
from tests.helpers.processes import SERVER_COMMANDS, Server, http_get, metric, start_server, stop, timeout


async def still_serving(server: Server) -> None:
    """A well-behaved client still gets its echo, and the process reports itself healthy."""
    async with websockets.connect(server.ws_url("/ws/echo/?history=0"), origin=server.origin) as ws:
        await ws.send("still here")
        assert await next_echo(ws) == "still here"
    assert server.process.poll() is None
    status, _ = await asyncio.to_thread(http_get, server.http_url("/healthz"))
    assert status == 200


async def close_code_of(ws: websockets.ClientConnection) -> tuple[int, list[dict]]:
    """Read until the server closes; return its close code and the server frames seen before it."""
    frames: list[dict] = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            message = await asyncio.wait_for(ws.recv(), timeout(10))
            if isinstance(message, str) and message.startswith('{"type":'):
                frames += data_frames(message)
    return closed.value.rcvd.code, frames


async def test_a_frame_above_the_size_limit_is_closed_with_1009(any_server: Server) -> None:
    async with websockets.connect(
        any_server.ws_url("/ws/echo/?history=0"), origin=any_server.origin, max_size=None
    ) as ws:
        await ws.send("x" * (64 * 1024 + 1))
        code, _ = await close_code_of(ws)
    assert code == 1009
    await still_serving(any_server)


async def test_invalid_utf8_in_a_text_frame_is_closed_with_1007(any_server: Server) -> None:
    async with websockets.connect(any_server.ws_url("/ws/echo/?history=0"), origin=any_server.origin) as ws:
        await ws.send(b"\xff\xfe not utf-8", text=True)
        code, _ = await close_code_of(ws)
    assert code == 1007
    await still_serving(any_server)


async def test_a_flood_is_rate_limited_then_closed_with_1008(server_env: dict[str, str]) -> None:
    env = {**server_env, "WS_RATE_LIMIT": "20", "WS_RATE_BURST": "20", "WS_RATE_STRIKES": "100"}
    with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
        bystander_url = server.ws_url("/ws/echo/?history=0")
        async with (
            websockets.connect(server.ws_url("/ws/echo/?history=0"), origin=server.origin) as flooder,
            websockets.connect(bystander_url, origin=server.origin) as bystander,
        ):
            for n in range(400):
                await flooder.send(f"flood {n}")
            code, frames = await close_code_of(flooder)
            assert code == 1008
            assert (frames[-1]["type"], frames[-1]["code"]) == ("error", "rate_limited")
            await bystander.send("unaffected")
            assert await next_echo(bystander) == "unaffected"
        assert await asyncio.to_thread(metric, server, 'ws_dropped_total{reason="rate_limit"}') > 100
        server.output.wait_for(r"WARNING .*rate_limited: more than 20 frames/s")  # the log says it plainly
        await still_serving(server)


async def test_connections_per_address_are_capped_using_the_forwarded_address(
    server_env: dict[str, str],
) -> None:
    env = {**server_env, "WS_MAX_CONNECTIONS_PER_ADDRESS": "2", "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
        url = server.ws_url("/ws/echo/?history=0")

        def as_client(address: str):  # type: ignore[no-untyped-def]
            # A proxy on loopback says who the client is (documentation addresses: no traffic).
            headers = {"X-Forwarded-For": address}
            return websockets.connect(url, origin=server.origin, additional_headers=headers)

        async with as_client("198.51.100.7") as first, as_client("198.51.100.7") as second:
            async with as_client("198.51.100.7") as third:
                # Refused for now, not for good: 1013 (try again later), and the error frame says why.
                code, frames = await close_code_of(third)
                assert code == 1013 and frames[-1]["code"] == "too_many_connections"
            for ws in (first, second):
                await ws.send("ok")
                assert await next_echo(ws) == "ok"
            await second.close()
            # Once one of them has gone (the server counts it gone), the address is let back in.
            async with asyncio.timeout(timeout(10)):
                while await asyncio.to_thread(metric, server, "ws_connections_open") != 1:
                    pass
            async with as_client("198.51.100.7") as again:
                await again.send("back")
                assert await next_echo(again) == "back"
        # IPv6: one /64 is one subscriber, whatever address in it each connection comes from.
        async with as_client("2001:db8:0:7::1") as first, as_client("2001:db8:0:7::2") as second:
            async with as_client("2001:db8:0:7::3") as third:
                code, frames = await close_code_of(third)
                assert code == 1013 and frames[-1]["code"] == "too_many_connections"
            async with as_client("2001:db8:0:8::1") as neighbour:
                await neighbour.send("other /64")
                assert await next_echo(neighbour) == "other /64"
            for ws in (first, second):
                await ws.send("ok")
                assert await next_echo(ws) == "ok"
        assert await asyncio.to_thread(metric, server, 'ws_refused_total{reason="too_many_connections"}') == 2
        await still_serving(server)  # loopback clients are exempt


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes as a client and return whatever the server answers before closing."""
    return raw_exchange_from(port, request)[1]


def raw_exchange_from(port: int, request: bytes, shut: bool = True) -> tuple[int, bytes]:
    """Send raw bytes as a client; return the client's own port and what the server answered.

    ``shut``: end the client's side once sent (else the server must end the exchange itself).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout(10)) as sock:
        sock.sendall(request)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return sock.getsockname()[1], b"".join(chunks)


UPGRADE = b"GET /ws/echo/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
HOSTILE_HANDSHAKES = {
    "no-key": UPGRADE + b"Host: localhost\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "two-origins": UPGRADE
    + KEY
    + b"Host: localhost\r\nSec-WebSocket-Version: 13\r\nOrigin: http://localhost\r\nOrigin: http://a.example\r\n\r\n",
    "bad-key": UPGRADE + b"Host: localhost\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "version-8": UPGRADE + KEY + b"Host: localhost\r\nSec-WebSocket-Version: 8\r\n\r\n",
    "bad-protocol": UPGRADE
    + KEY
    + b"Host: localhost\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ,,a b\r\n\r\n",
    "foreign-host": UPGRADE
    + KEY
    + b"Host: a.example\r\nOrigin: http://a.example\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "oversize-header": UPGRADE + KEY + b"Host: localhost\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
}


async def test_a_hostile_handshake_costs_one_short_log_line_and_a_count(production_server: Server) -> None:
    """Each is refused (4xx), logged once (address and reason, no traceback) and counted in /metrics."""
    server = production_server
    before = await asyncio.to_thread(metric, server, "ws_handshakes_refused_total")
    ports = {}
    for name, request in HOSTILE_HANDSHAKES.items():
        port, answer = await asyncio.to_thread(raw_exchange_from, server.port, request, False)
        assert answer.split(b" ", 2)[1][:1] == b"4", (name, answer[:100])
        ports[name] = port
        await asyncio.to_thread(server.output.wait_for, rf"127\.0\.0\.1:{port}\b")
    await still_serving(server)
    refused = await asyncio.to_thread(metric, server, "ws_handshakes_refused_total")
    assert refused - before == len(HOSTILE_HANDSHAKES) - 1  # the foreign Host is the app's refusal
    stop(server.process)
    log = server.output.drain()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    for name, port in ports.items():
        lines = [line for line in log.splitlines() if f"127.0.0.1:{port}" in line]
        assert len(lines) == 1, (name, lines)
        assert len(lines[0]) < 250 and re.search(r" (WARNING|INFO) ", lines[0]), (name, lines[0])


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_foreign_host_and_slow_headers_cost_one_short_line_and_a_count(
    server_env: dict[str, str],
) -> None:
    """A foreign ``Host`` (was a 30-line traceback at ERROR) and a slowloris (was a socket held for
    ever: uvicorn has no deadline for headers) each get an answer, one short line and a count."""
    env = {**server_env, "HTTP_HEADERS_TIMEOUT": "1"}
    with start_server(SERVER_COMMANDS["production"], env) as server:
        port, answer = await asyncio.to_thread(
            raw_exchange_from, server.port, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", False
        )
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
        ports = {"foreign-host": port}
        for name, start in (
            ("slow-headers", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: a"),
            ("silent", b""),
        ):
            with socket.create_connection(("127.0.0.1", server.port), timeout=timeout(10)) as sock:
                sock.sendall(start)
                started = time.monotonic()
                answer = await asyncio.to_thread(read_until_closed, sock)
                assert answer.startswith(b"HTTP/1.1 408 "), (name, answer[:100])
                assert time.monotonic() - started < timeout(5), name
                ports[name] = sock.getsockname()[1]
        await still_serving(server)
        assert await asyncio.to_thread(metric, server, 'http_refused_total{reason="DisallowedHost"}') == 1
        assert await asyncio.to_thread(metric, server, 'http_refused_total{reason="headers_timeout"}') == 2
        stop(server.process)
        log = server.output.drain()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    lines = [line for line in log.splitlines() if "a.example" in line]
    assert len(lines) == 1 and " WARNING " in lines[0] and "127.0.0.1" in lines[0], lines
    assert len(lines[0]) < 250, lines[0]
    for name in ("slow-headers", "silent"):
        lines = [line for line in log.splitlines() if f"127.0.0.1:{ports[name]}" in line]
        assert len(lines) == 1 and " WARNING " in lines[0] and len(lines[0]) < 250, (name, lines)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ws/echo/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET /ws/echo/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: not-base64\r\nSec-WebSocket-Version: 99\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Huge: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(5000)) + b"\r\n",
    ],
    ids=["no-key", "bad-key-and-version", "tls-to-plain-port", "huge-header", "many-headers"],
)
async def test_malformed_handshakes_are_refused_and_the_server_stays_up(
    any_server: Server, request_bytes: bytes
) -> None:
    answer = await asyncio.to_thread(raw_exchange, any_server.port, request_bytes)
    assert b" 101 " not in answer.split(b"\r\n", 1)[0]  # never upgraded
    await still_serving(any_server)


async def test_fuzzing_the_live_server_leaves_it_healthy_and_serving(production_server: Server) -> None:
    server = production_server
    rng = random.Random(20261126)
    queries = [
        "",
        "?topics=a,b&history=3",
        "?topics=%00",
        "?since=x:y",
        "?history=99999999",
        "?" + "a" * 5000,
    ]

    async def hostile(n: int) -> None:
        url = server.ws_url("/ws/echo/" + rng.choice(queries))
        try:
            async with websockets.connect(
                url, origin=server.origin, max_size=None, open_timeout=timeout(10)
            ) as ws:
                for _ in range(rng.randrange(1, 30)):
                    kind = rng.randrange(4)
                    payload = rng.randbytes(rng.choice([0, 1, 100, 5000, 70_000]))
                    if kind == 0:
                        await ws.send(payload)
                    elif kind == 1:
                        await ws.send(payload.decode("latin-1"))
                    elif kind == 2:
                        await ws.send(payload, text=True)  # most likely invalid UTF-8
                    else:
                        await ws.send(
                            json.dumps({"type": "relay.frame", "text": "forged", "group": "topic.prices"})
                        )
        except (websockets.ConnectionClosed, websockets.InvalidStatus, OSError):
            pass  # being closed on is the expected answer to most of this

    async with websockets.connect(server.ws_url("/ws/echo/?history=0"), origin=server.origin) as good:
        for round_number in range(5):
            await asyncio.gather(*(hostile(n) for n in range(20)))
            await good.send(f"round {round_number}")
            assert await next_echo(good) == f"round {round_number}"
    await still_serving(server)
    assert "Traceback" not in server.output.text()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda t, h: f"topics={t}&history={h}",
            st.from_regex(r"[a-z0-9,]{0,20}", fullmatch=True),
            st.text(max_size=4),
        ),
    ),
    frames=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8),
)
def test_random_frames_and_query_strings_get_echoes_or_a_clean_refusal(query: str, frames: list) -> None:
    """Property: whatever the URL and frames, the consumer either refuses the URL with an error frame
    and close 1008, or echoes every frame exactly, in order, with nothing else but server frames."""
    from urllib.parse import quote

    from channels.testing import WebsocketCommunicator

    from wsproject.asgi import application

    async def scenario() -> None:
        path = "/ws/echo/?" + quote(query, safe="=&,:")
        client = WebsocketCommunicator(application, path, headers=[(b"origin", b"http://localhost:8000")])
        connected, _ = await client.connect()
        assert connected
        for frame in frames:
            key = "text" if isinstance(frame, str) else "bytes"
            await client.send_input({"type": "websocket.receive", key: frame})
        echoes: list = []
        while len(echoes) < len(frames):
            output = await client.receive_output(timeout=3)
            if output["type"] == "websocket.close":
                assert output["code"] == 1008
                return
            body = output.get("text", output.get("bytes"))
            if isinstance(body, str) and body.startswith('{"type":"error"'):
                assert (await client.receive_output(timeout=3))["code"] == 1008
                return
            if isinstance(body, str) and any(
                body.startswith(f'{{"type":"{t}"') for t in ("presence", "data", "reset")
            ):
                continue
            echoes.append(body)
        assert echoes == frames
        await client.disconnect()

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    token=st.one_of(
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=120),
        st.builds(
            lambda payload, signature: f"{payload}.{signature}",
            st.from_regex(r"[A-Za-z0-9_-]{0,60}", fullmatch=True),
            st.from_regex(r"[A-Za-z0-9_-]{0,50}", fullmatch=True),
        ),
    ),
    topic=st.sampled_from(["prices", "user-1", "user-2", "user-x"]),
)
def test_random_connection_tokens_never_open_a_private_topic(token: str, topic: str) -> None:
    """Property: a token no one issued is refused (bad_token, 3000) before any topic is read; without
    one, a private topic is refused (forbidden, 3003) and a public one served."""
    from channels.testing import WebsocketCommunicator

    from wsproject.asgi import application

    async def scenario() -> None:
        client = WebsocketCommunicator(
            application,
            f"/ws/echo/?topics={topic}&history=0",
            headers=[(b"origin", b"http://localhost:8000")],
            subprotocols=["echo.v1", "echo.token." + token],
        )
        connected, _ = await client.connect()
        assert connected
        frame = json.loads((await client.receive_output(timeout=3))["text"])
        assert (frame["type"], frame["code"]) == ("error", "bad_token"), frame
        assert (await client.receive_output(timeout=3))["code"] == 3000

    asyncio.run(scenario())
