"""The baseline: a plain ``websockets`` server on uvloop that echoes and broadcasts in-process.

It is what the project's server is measured against in every run. It echoes every frame on every path
and, when told to on standard input (``publish RATE COUNT``), broadcasts ``COUNT`` data frames at
``RATE`` per second to every connected client, in the project's wire format
(``{"type":"data","topic":"bench","seq":N,"ts":...,"values":{"v":...}}``): each frame is JSON-encoded
once, stamped with ``time.time()`` at publish, and handed to ``websockets.broadcast()``, which does not
wait for slow clients (no backpressure: a client that cannot keep up has its write buffer grow).

Usage::

    python -m bench.baseline_server [--host 127.0.0.1] [--port 0]

It prints ``Listening on TCP address HOST:PORT`` once ready and ``published N`` after each publish
command; it stops on SIGINT / SIGTERM or when standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Sequence

import uvloop
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve

from bench.limits import raise_open_files_limit

TOPIC = "bench"


async def echo(connection: ServerConnection) -> None:
    """Called for each connection, on any path: send every frame straight back, text as text."""
    async for message in connection:
        await connection.send(message)


def encode(seq: int, ts: float, value: float) -> str:
    """One data frame in the project's wire format, as compact JSON text."""
    frame = {"type": "data", "topic": TOPIC, "seq": seq, "ts": ts, "values": {"v": value}}
    return json.dumps(frame, separators=(",", ":"))


async def publish(server: Server, rate: float, count: int) -> int:
    """Broadcast ``count`` frames at ``rate`` per second on a fixed schedule, like ``push_data``."""
    interval = 1.0 / rate
    next_tick = time.monotonic()
    for seq in range(1, count + 1):
        delay = next_tick - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        broadcast(server.connections, encode(seq, time.time(), math.sin(seq * interval)))
        next_tick = max(next_tick + interval, time.monotonic())
    return count


async def commands(server: Server) -> None:
    """Read ``publish RATE COUNT`` lines from standard input until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        words = line.decode().split()
        if len(words) == 3 and words[0] == "publish":
            sent = await publish(server, float(words[1]), int(words[2]))
            print(f"published {sent}", flush=True)
        elif words:
            print(f"unknown command: {line.decode().strip()}", file=sys.stderr, flush=True)


async def main(host: str, port: int) -> None:
    """Serve until a signal arrives or standard input closes."""
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.cancel)
    # No compression, no ping timeout: the load generator offers none and idles on purpose.
    async with serve(echo, host, port, compression=None, ping_interval=None, max_queue=None) as server:
        bound = next(iter(server.sockets)).getsockname()
        print(f"Listening on TCP address {bound[0]}:{bound[1]}", flush=True)
        reading = asyncio.create_task(commands(server))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([reading, stop], return_when=asyncio.FIRST_COMPLETED)
        reading.cancel()


def run(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and serve on uvloop."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_open_files_limit()
    uvloop.run(main(args.host, args.port))


if __name__ == "__main__":
    run()
