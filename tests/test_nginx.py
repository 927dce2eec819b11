"""The repo's nginx config (deploy/nginx/) in front of two production server processes sharing Redis.

nginx is Debian's (``apt-get install -y nginx``), run in the foreground as the test's child, with
everything it writes (pid, temp files) in a temporary directory. The config is the repo's, with the
changes a test machine needs and nothing else: it listens on a free loopback port instead of port 80,
and its upstream include lists the two local servers instead of compose's ``web`` replicas. Without
nginx the test skips, except under ``CI=true``, where a missing nginx is a failure.

Each client connects from an address of its own (127.0.0.x), so a server's "[accepted]" log line,
which shows the address nginx forwarded (``X-Forwarded-For``), says which server holds which client.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websockets

from scripts import devenv
from tests.helpers.clients import data_frames
from tests.helpers.nginx import require_nginx, start_nginx
from tests.helpers.processes import OutputWatcher, Server, spawn, start_server, stop, timeout

CLOSE_GOING_AWAY = 1001


class Client:
    """A page's worth of client behind nginx: follows one topic, and on 1001 reconnects with ``since``."""

    def __init__(self, index: int, nginx: Server, topic: str, changed: asyncio.Condition) -> None:
        self.address = f"127.0.0.{10 + index}"  # nginx forwards it; the servers log it
        self.nginx = nginx
        self.topic = topic
        self.changed = changed
        self.seqs: list[int] = []
        self.connections = 0
        self.close_codes: list[int | None] = []
        self.close_seq = 0  # the last seq seen before a 1001
        self.epoch = ""  # of the frames seen (a restarted stream would show up as a reset)
        self.error: str | None = None  # why run() ended early (a refused handshake, say)

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    async def run(self) -> None:
        """Called as a task: stays connected until cancelled or closed with a code other than 1001."""
        try:
            await self._follow()
        except Exception as exc:
            self.error = repr(exc)
            await self._notify()
            raise

    async def _follow(self) -> None:
        query = f"topics={self.topic}&history=0"
        while True:
            async with websockets.connect(
                self.nginx.ws_url(f"/ws/echo/?{query}"),
                origin=self.nginx.origin,
                local_addr=(self.address, 0),
                max_size=None,
            ) as ws:
                await self._notify(connections=1)
                with contextlib.suppress(websockets.ConnectionClosedError):
                    async for message in ws:  # ends on a 1000 or 1001 close
                        for frame in data_frames(message):
                            if frame["type"] == "data":
                                self.seqs.append(frame["seq"])
                                self.epoch = frame["epoch"]
                                await self._notify()
            self.close_codes.append(ws.close_code)
            await self._notify()
            if ws.close_code != CLOSE_GOING_AWAY:
                return
            self.close_seq = self.last
            query = f"topics={self.topic}&since={self.topic}:{self.close_seq}:{self.epoch}"

    async def _notify(self, connections: int = 0) -> None:
        async with self.changed:
            self.connections += connections
            self.changed.notify_all()


async def until(clients: list[Client], predicate: Callable[[], bool], what: str, seconds: float) -> None:
    """Wait until ``predicate`` holds; fail at once if a client failed, or after ``seconds``."""

    def errors() -> dict[str, str]:
        return {c.address: c.error for c in clients if c.error}

    async with clients[0].changed:
        try:
            await asyncio.wait_for(
                clients[0].changed.wait_for(lambda: predicate() or errors()), timeout(seconds)
            )
        except TimeoutError:
            last = {c.address: c.last for c in clients}
            raise AssertionError(f"timed out waiting until {what}; last seqs {last}") from None
    assert not errors(), f"clients failed while waiting until {what}: {errors()}"


def push(topic: str, count: int, rate: int, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start ``manage.py push_data`` publishing ``count`` messages to ``topic``."""
    command = [sys.executable, "manage.py", "push_data", "--source", "sine", "--topic", topic]
    return spawn([*command, "--count", str(count), "--rate", str(rate)], env)


async def finished(process: subprocess.Popen[str]) -> None:
    output = OutputWatcher(process)
    code = await asyncio.to_thread(process.wait, timeout(60))
    assert code == 0, output.drain()


async def flush_log(server: Server) -> None:
    """Wait until every line a server logged before now has been read (a marker connection's line)."""
    marker = uuid.uuid4().hex
    async with websockets.connect(
        server.ws_url(f"/ws/echo/?history=0&marker={marker}"), origin=server.origin
    ):
        pass
    await asyncio.to_thread(server.output.wait_for, rf"marker={marker}\" \[accepted\]", 15)


def accepted_addresses(server: Server, query: str) -> set[str]:
    """Client addresses in a server's uvicorn "[accepted]" lines for this exact WebSocket query."""
    path = re.escape(f"/ws/echo/?{query}")
    line = re.compile(rf'uvicorn\.error: ([\d.]+):\d+ - "WebSocket {path}" \[accepted\]')
    return {match.group(1) for text in server.output.lines if (match := line.search(text))}


@pytest.fixture
def nginx_binary() -> str:
    """Debian's nginx, looked for before any server starts (skip or, under CI=true, fail)."""
    return require_nginx()


@pytest.fixture
def two_servers(server_env: dict[str, str]) -> Iterator[list[Server]]:
    """Two production server processes sharing Redis and the channel-layer prefix (the environment's)."""
    env = {**server_env, "FORWARDED_ALLOW_IPS": "127.0.0.1"}  # nginx connects from 127.0.0.1
    command = devenv.production_command("127.0.0.1", "0")
    with start_server(command, env) as first, start_server(command, env) as second:
        yield [first, second]


@pytest.mark.slow
async def test_nginx_spreads_clients_and_moves_them_when_a_server_stops(
    nginx_binary: str, two_servers: list[Server], server_env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    clients_count, before, after = 8, 50, 100
    with start_nginx(nginx_binary, [server.port for server in two_servers], tmp_path) as nginx:
        page = await asyncio.to_thread(urllib.request.urlopen, nginx.http_url("/"), timeout=timeout(10))
        assert page.status == 200 and b"<html" in page.read().lower()
        assert page.headers["Server"] == "nginx", "server_tokens off: no version in the Server header"
        health = await asyncio.to_thread(
            urllib.request.urlopen, nginx.http_url("/nginx-health"), timeout=timeout(10)
        )
        assert health.status == 200 and health.read() == b"ok\n"

        changed = asyncio.Condition()
        clients = [Client(i, nginx, topic, changed) for i in range(clients_count)]
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        try:
            await until(clients, lambda: all(c.connections == 1 for c in clients), "all connected", 20)
            # Which server holds which client: the address nginx forwarded, as each server logged it.
            for server in two_servers:
                await flush_log(server)
            first_query = f"topics={topic}&history=0"
            holders = [accepted_addresses(server, first_query) for server in two_servers]
            assert all(holders), f"nginx did not spread the clients over both servers: {holders}"
            assert holders[0] | holders[1] == {c.address for c in clients} and not holders[0] & holders[1]

            await finished(push(topic, before, 200, server_env))
            await until(clients, lambda: all(c.last == before for c in clients), f"all saw {before}", 30)

            # Stop the first server while the second batch is being published.
            stopping, staying = two_servers
            pusher = push(topic, after, 50, server_env)
            await until(clients, lambda: any(c.last >= before + 5 for c in clients), "publishing", 30)
            # uvicorn re-raises the SIGTERM once it has shut down gracefully: that is its exit status.
            code = await asyncio.to_thread(stop, stopping.process, signal.SIGTERM, 15)
            assert code in (0, -signal.SIGTERM), stopping.output.drain()
            await finished(pusher)
            total = before + after
            await until(clients, lambda: all(c.last == total for c in clients), f"all saw {total}", 60)

            moved = [c for c in clients if c.address in holders[0]]
            for client in moved:
                assert client.close_codes == [CLOSE_GOING_AWAY] and client.connections == 2, client.address
            for client in clients:
                assert client.seqs == list(range(1, total + 1)), f"gap or duplicate for {client.address}"
            for client in clients:
                if client not in moved:
                    assert client.close_codes == [] and client.connections == 1, client.address
            # The moved clients reached the other server, through nginx, asking for what they missed.
            await flush_log(staying)
            for client in moved:
                query = f"topics={topic}&since={topic}:{client.close_seq}:{client.epoch}"
                assert client.address in accepted_addresses(staying, query), staying.output.text()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    stopped = two_servers[0].output.drain()
    assert "Traceback" not in stopped and re.search(r"Closing \d+ WebSocket connections with 1001", stopped)
    assert "Traceback" not in two_servers[1].output.text(), two_servers[1].output.text()
