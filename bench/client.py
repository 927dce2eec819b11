"""A load-generator worker process: WebSocket clients on uvloop, driven by JSON lines on stdin.

Started several times over by ``bench.loadgen`` so that the clients are spread over processes (one
Python process alone cannot keep up with a fast server). Each job has two phases, so that every worker
is ready before any measurement starts:

1. a job line (``{"op": "fanout", ...}``): the worker connects its share of clients and prints
   ``{"event": "ready", ...}``;
2. ``{"op": "go", ...}``: it measures and prints ``{"event": "result", ...}``.

A fan-out job also listens, while measuring, for ``{"op": "published", "grace": S}``: the publisher
is done, so whatever has not arrived ``S`` seconds later counts as lost. It may name several servers
(``"urls"``: its clients take them in turn) and how many loopback source addresses to use
(``"sources"``), as ``bench.many`` does. Text frames are split on
``"\\n"``: a server may batch several JSON data frames into one text frame.

Usage: ``python -m bench.client`` (it is not meant to be run by hand).
"""

from __future__ import annotations

import array
import asyncio
import base64
import collections
import contextlib
import ipaddress
import json
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from bench.limits import raise_open_files_limit

Job = dict[str, Any]
# Handshakes in flight at once per worker, except in a burst, where all start together.
CONNECT_CONCURRENCY = 200
OPEN_TIMEOUT = 60.0
# Clients of a loopback server connect from 127.0.0.2 to 127.0.0.9 in turn (source_addresses).
SOURCE_HOSTS = range(2, 10)
# <linux/in.h>: bind() an address but leave the port to connect(); the socket module lacks the name.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def emit(event: str, **fields: Any) -> None:
    """Write one event line for the controller."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def pack(samples: array.array[float]) -> str:
    """Latencies (float32) as base64, compact enough for a few hundred thousand samples per line."""
    return base64.b64encode(array.array("f", samples).tobytes()).decode()


# The data frame's head as the project and the baseline encode it: parsed without json.loads, because
# at tens of thousands of frames per second the client's own parsing would cap what it can measure.
# The project's frames carry their stream's epoch before the seq; the baseline's do not.
DATA_HEAD = re.compile(
    r'\{"type":"data","topic":"([^"]*)",(?:"epoch":"[0-9a-z]*",)?"seq":(\d+),"ts":([0-9.eE+-]+)[,}]'
)


def parse_data_frame(line: str, topic: str) -> tuple[int, float] | None:
    """``(seq, ts)`` of a live data frame of ``topic``; None for anything else (presence, replays...)."""
    head = DATA_HEAD.match(line)
    if head is not None:
        if head.group(1) != topic or line.endswith(',"replay":true}'):
            return None
        return int(head.group(2)), float(head.group(3))
    frame = json.loads(line)  # another field order or spacing: the slow, general way
    if frame.get("type") != "data" or frame.get("topic") != topic or frame.get("replay"):
        return None
    return int(frame["seq"]), float(frame["ts"])


def source_addresses(url: str) -> list[str | None]:
    """The local addresses to spread ``url``'s clients over: 127.0.0.2-9 for a loopback server, else none.

    A client's port comes from the range ``/proc/sys/net/ipv4/ip_local_port_range`` (28,232 ports by
    default) for each source address and server address:port, so one source address tops out below
    30,000 connections to one server. Linux routes all of 127.0.0.0/8 to ``lo`` without any setup, so
    eight source addresses give room for over 200,000. The server sees them as loopback addresses,
    which its per-address connection cap (``WS_MAX_CONNECTIONS_PER_ADDRESS``) exempts.
    """
    try:
        server = ipaddress.ip_address(urllib.parse.urlsplit(url).hostname or "")
    except ValueError:
        return [None]  # a host name: leave the choice to the kernel
    if server.version == 4 and server.is_loopback:
        return [f"127.0.0.{n}" for n in SOURCE_HOSTS]
    return [None]


async def connected_socket(url: str, source: str) -> socket.socket:
    """A TCP socket from ``source`` (any port) connected to ``url``'s host and port."""
    parts = urllib.parse.urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # The port is picked at connect(), per destination, rather than at bind(), where it would have to
        # be unused towards every destination: the same port range then serves every server started.
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (parts.hostname, parts.port or 80)), OPEN_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_client(
    url: str, source: str | None = None, compression: str | None = None
) -> ClientConnection:
    """One client connection: no compression unless asked (``"deflate"``: measure the server's, not
    zlib's by default), no keepalive pings.

    From ``source`` (an address of this machine) if given, else from whatever address the kernel picks.
    """
    options: dict[str, Any] = {"sock": await connected_socket(url, source)} if source else {}
    return await connect(
        url,
        compression=compression,
        ping_interval=None,
        open_timeout=OPEN_TIMEOUT,
        max_size=None,
        max_queue=None,
        **options,
    )


def failure_name(exc: BaseException) -> str:
    """How a handshake failed, for the report: ``HTTP 500``, ``TimeoutError``, ``ConnectionResetError``."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


async def open_many(
    url: str | list[str],
    count: int,
    concurrency: int | None,
    compression: str | None = None,
    sources: int | None = None,
    first: int = 0,
) -> tuple[list[ClientConnection], Job]:
    """Open ``count`` clients, at most ``concurrency`` handshakes at a time (None: all at once).

    With a list of URLs (several servers, each with a share), client ``i`` connects to the ``i``-th
    in turn, counting from ``first`` (this worker's first client among all workers'), so that shares
    stay even across workers. ``sources`` limits the loopback source addresses used to the first ``sources``.
    Returns the open connections and the handshake report: failures by kind and handshake times.
    """
    urls = [url] if isinstance(url, str) else url
    limit = asyncio.Semaphore(concurrency or max(count, 1))
    failures: collections.Counter[str] = collections.Counter()
    times: array.array[float] = array.array("d")
    from_addresses = source_addresses(urls[0])[: sources or None]

    async def one(index: int) -> ClientConnection | None:
        async with limit:
            started = time.perf_counter()
            target = urls[(first + index) % len(urls)]
            source = from_addresses[((first + index) // len(urls)) % len(from_addresses)]
            try:
                connection = await open_client(target, source, compression)
            except Exception as exc:
                failures[failure_name(exc)] += 1
                return None
            times.append(time.perf_counter() - started)
            return connection

    opened = await asyncio.gather(*(one(i) for i in range(count)))
    connections = [c for c in opened if c is not None]
    return connections, {"connected": len(connections), "failures": dict(failures), "handshake": pack(times)}


async def close_all(connections: list[ClientConnection]) -> None:
    """Close every connection, ignoring those the server already closed."""
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


class Worker:
    """Runs jobs one after another; keeps the control-line reader between phases."""

    def __init__(self, lines: asyncio.Queue[Job | None]) -> None:
        self.lines = lines

    async def next_line(self) -> Job | None:
        return await self.lines.get()

    async def run(self) -> None:
        handlers: dict[str, Callable[[Job], Awaitable[None]]] = {
            "echo_latency": self.echo_latency,
            "echo_throughput": self.echo_throughput,
            "fanout": self.fanout,
            "idle": self.idle,
            "burst": self.burst,
        }
        while (job := await self.next_line()) is not None:
            await handlers[job["op"]](job)

    async def wait_go(self) -> Job:
        line = await self.next_line()
        if line is None or line.get("op") != "go":
            raise SystemExit(f"expected a go line, got {line!r}")
        return line

    # ------------------------------------------------------------ echo

    async def echo_latency(self, job: Job) -> None:
        """Round trips one at a time on each connection, connections in turn: pure latency, no load."""
        connections, report = await open_many(job["url"], job["connections"], CONNECT_CONCURRENCY)
        emit("ready", **report)
        go = await self.wait_go()
        rtts: array.array[float] = array.array("d")
        payload = "x" * go.get("size", 16)
        for _ in range(go["messages"]):
            for connection in connections:
                started = time.perf_counter()
                await connection.send(payload)
                await connection.recv()
                rtts.append(time.perf_counter() - started)
        await close_all(connections)
        emit("result", rtts=pack(rtts), messages=len(rtts))

    async def echo_throughput(self, job: Job) -> None:
        """Each connection sends as fast as it can with at most ``window`` messages in flight."""
        connections, report = await open_many(job["url"], job["connections"], CONNECT_CONCURRENCY)
        emit("ready", **report)
        go = await self.wait_go()
        window, duration = go["window"], go["duration"]
        payload = "x" * go.get("size", 16)
        replies = 0
        errors: collections.Counter[str] = collections.Counter()
        stop_at = time.monotonic() + duration

        async def pump(connection: ClientConnection) -> None:
            nonlocal replies
            credits = asyncio.Semaphore(window)

            async def read() -> None:
                nonlocal replies
                async for _ in connection:
                    replies += 1
                    credits.release()

            reader = asyncio.create_task(read())
            try:
                while time.monotonic() < stop_at and not reader.done():
                    await credits.acquire()
                    await connection.send(payload)
            except Exception as exc:
                errors[type(exc).__name__] += 1
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

        started = time.monotonic()
        await asyncio.gather(*(pump(c) for c in connections))
        elapsed = time.monotonic() - started
        await close_all(connections)
        emit("result", replies=replies, seconds=elapsed, errors=dict(errors))

    # ------------------------------------------------------------ fan-out

    async def fanout(self, job: Job) -> None:
        """Count every data frame of ``topic`` each client receives: seq gaps and publish→receive latency."""
        topic = job["topic"]
        connections, report = await open_many(
            job.get("urls") or job["url"],
            job["clients"],
            CONNECT_CONCURRENCY,
            job.get("compression"),
            job.get("sources"),
            job.get("first", 0),
        )
        received = [0] * len(connections)
        last_seq = [0] * len(connections)
        gaps = [0] * len(connections)
        latencies: array.array[float] = array.array("d")
        first_ts = [float("inf")]
        last_receive = [0.0]
        expected = [0]
        done = asyncio.Event()
        remaining = [len(connections)]
        closed: collections.Counter[str] = collections.Counter()

        async def listen(index: int, connection: ClientConnection) -> None:
            finished = False
            try:
                async for message in connection:
                    now = time.time()
                    for line in str(message).split("\n"):
                        if not line:
                            continue
                        parsed = parse_data_frame(line, topic)
                        if parsed is None:
                            continue
                        seq, ts = parsed
                        received[index] += 1
                        if seq > last_seq[index] + 1:
                            gaps[index] += seq - last_seq[index] - 1
                        last_seq[index] = max(seq, last_seq[index])
                        latencies.append(now - ts)
                        first_ts[0] = min(first_ts[0], ts)
                        last_receive[0] = now
                    if not finished and expected[0] and last_seq[index] >= expected[0]:
                        finished = True
                        remaining[0] -= 1
                        if remaining[0] == 0:
                            done.set()
            except Exception as exc:
                closed[type(exc).__name__] += 1
            code = connection.close_code
            if code is not None and code != 1000:
                closed[f"close {code}"] += 1
            if not finished:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        listeners = [asyncio.create_task(listen(i, c)) for i, c in enumerate(connections)]
        emit("ready", **report)
        go = await self.wait_go()
        expected[0] = go["count"]
        if not connections:
            done.set()
        published = asyncio.ensure_future(self.next_line())
        finished = asyncio.ensure_future(done.wait())
        await asyncio.wait([finished, published], timeout=go["deadline"], return_when="FIRST_COMPLETED")
        if published.done() and not finished.done():
            # The publisher is done: frames not here within the grace period count as lost.
            await asyncio.wait([finished], timeout=(published.result() or {}).get("grace", 5.0))
        finished.cancel()
        await published  # the controller always sends "published": keep the line protocol in step
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await close_all(connections)
        emit(
            "result",
            clients=len(connections),
            received=sum(received),
            min_received=min(received, default=0),
            gaps=sum(gaps),
            latencies=pack(latencies),
            first_ts=first_ts[0] if latencies else None,
            last_receive=last_receive[0] if latencies else None,
            closed=dict(closed),
        )

    # ------------------------------------------------------------ connections

    async def idle(self, job: Job) -> None:
        """Open clients at a steady pace and hold them, silent, until ``go``; then close them."""
        connections, report = await open_many(job["url"], job["clients"], CONNECT_CONCURRENCY)
        emit("ready", **report)
        await self.wait_go()
        still_open = sum(1 for c in connections if c.close_code is None)
        await close_all(connections)
        emit("result", still_open=still_open)

    async def burst(self, job: Job) -> None:
        """On ``go``, start every handshake at once; report how each ended; then close them."""
        emit("ready", connected=0, failures={}, handshake="")
        await self.wait_go()
        connections, report = await open_many(job["url"], job["clients"], None)
        await close_all(connections)
        emit("result", **report)


async def main() -> None:
    """Read control lines from stdin on a background task and run the jobs they describe."""
    lines: asyncio.Queue[Job | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def read() -> None:
        while line := await reader.readline():
            await lines.put(json.loads(line))
        await lines.put(None)

    reading = asyncio.create_task(read())
    await Worker(lines).run()
    reading.cancel()


if __name__ == "__main__":
    raise_open_files_limit()
    uvloop.run(main())
