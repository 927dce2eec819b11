"""The chaos run: servers behind the repo's nginx, publishers, reconnecting clients, and faults at random.

It checks the stream contract, not just survival: every client records every frame it receives, every
publisher prints what it published, and ``scripts.chaos_check`` proves afterwards, per client and topic,
that nothing was lost, duplicated or reset without need (rules in its docstring).

What runs, all on loopback and all children of this process:

- a Redis of its own with an append-only file synced on every write (``scripts.redis_server``);
- backends behind nginx on fixed ports (a killed one comes back on the same port): by default two
  production servers (uvicorn) and one development server (``runserver``, daphne), DEBUG off;
- ``push_data -v 2`` publishers, two sharing one topic, one on each other topic, and one feeding a
  topic of big frames from stdin (see ``Publisher``);
- asyncio clients through nginx, each from its own 127.0.0.x: steady ones, ones that close and
  reconnect on their own, slow readers that stop reading for seconds at a time (closed with 1013 once
  ``CHANNEL_LAYER_CAPACITY`` behind, or by the server's ping timeout), and one that floods until it is
  rate limited (1008). Every client reconnects after any close, with ``since`` for each topic it has a
  position in.

Faults, at moments drawn from a seeded RNG (the seed is printed; ``--seed`` repeats a schedule): Redis
killed and restarted with its data and without it, a backend SIGKILLed and restarted, a publisher
SIGTERMed and restarted. Then a quiet tail: publishers go on for a few seconds and stop, and the run
waits (on frames, up to a deadline) until every client is at every topic's final position.

``python -m scripts.chaos --help`` for the options; ``make chaos`` runs it for minutes and writes a
dated report to ``bench/results/``; ``tests/test_chaos.py`` runs a short one in ``make test``.

A tool, not a test module, though it runs servers and nginx with the tests' helpers
(``tests.helpers``: starting processes, waiting on their output, the repo's nginx config).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import websockets

from scripts import devenv
from scripts.chaos_check import (
    CheckResult,
    ClientLog,
    Close,
    Connect,
    Data,
    Error,
    Position,
    Published,
    Record,
    Reset,
    Violation,
    check,
    excerpt,
    final_positions,
)
from scripts.ports import free_port
from scripts.redis_server import RedisServer
from tests.helpers.nginx import NGINX, start_nginx
from tests.helpers.processes import LISTENING, ROOT, OutputWatcher, Server, spawn, stop, timeout

REDIS_KEEP, REDIS_EMPTY, SERVER_KILL, PUBLISHER_TERM = (
    "redis restart, data kept",
    "redis restart, empty",
    "server SIGKILL + restart",
    "publisher SIGTERM + restart",
)
FAULT_KINDS = (REDIS_KEEP, REDIS_EMPTY, SERVER_KILL, PUBLISHER_TERM)

BACKEND_KINDS = {
    "production": "production server (python -m wsproject.server: uvicorn)",
    "runserver": "development server (manage.py runserver --noreload: daphne)",
}

PUBLISHED_LINE = re.compile(r"^published (\S+) (\S+) (\d+)$")


@dataclass
class ChaosConfig:
    """Everything a run depends on; the defaults are ``make chaos``'s."""

    seed: int = field(default_factory=lambda: secrets.randbelow(10**9))
    backends: tuple[str, ...] = ("production", "production", "runserver")
    duration: float = 420.0  # seconds of faults
    first_fault: float = 5.0  # no fault before this (clients and publishers settle)
    gap: tuple[float, float] = (6.0, 16.0)  # seconds between faults, drawn uniformly
    tail: float = 5.0  # publishing after the last fault, before the publishers stop
    converge_seconds: float = 60.0  # how long the clients may take to catch up after that
    # topic -> rates of its publishers (messages/s); two on the first share its counter.
    publishers: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {"chaos-a": (15.0, 15.0), "chaos-b": (25.0,), "chaos-c": (8.0,)}
    )
    bulk_topic: str = "chaos-bulk"  # big frames, for the slow readers (see Publisher)
    bulk_rate: float = 100.0
    clients: int = 12
    slow: int = 2
    flooders: int = 1
    reconnecting: int = 4
    sse: int = 2  # of the clients, Server-Sent Events readers (/events/) resuming as EventSource does
    own_close: tuple[float, float] = (2.0, 12.0)  # reconnecting clients close after this long
    slow_reading: tuple[float, float] = (2.0, 6.0)  # a slow client reads for this long...
    slow_stall: tuple[float, float] = (12.0, 28.0)  # ...then stops reading for this long, and again
    slow_receive_buffer: int = 4096  # its socket's SO_RCVBUF, so that it holds little
    flood_rate: float = 2000.0  # frames/s a flooder sends (bursts of 50)
    capacity: int = 100  # CHANNEL_LAYER_CAPACITY
    history_length: int = 100_000  # HISTORY_LENGTH: more than a run publishes, so nothing is trimmed
    rate_limit: int = 100  # WS_RATE_LIMIT and WS_RATE_BURST
    rate_strikes: int = 500  # WS_RATE_STRIKES
    nginx: str = NGINX
    workdir: Path | None = None  # nginx's temporary files; a fresh directory by default


@dataclass
class Fault:
    t: float
    kind: str
    target: str
    down: float  # seconds the target was away on purpose
    took: float  # seconds until it was back (ready)


@dataclass
class ChaosRun:
    """What a run did and what the checker found."""

    config: ChaosConfig
    faults: list[Fault]
    published: list[Published]
    clients: list[ClientLog]
    kinds: dict[str, str]  # client name -> kind
    result: CheckResult
    violations: list[Violation]  # the checker's and the processes' (tracebacks, unclean exits)
    publishers: list[dict[str, Any]]
    backends: list[dict[str, Any]]
    durations: dict[str, float]
    converged: bool
    started_at: datetime
    wall_zero: float  # time.time() at t=0
    addresses: dict[str, str]  # client name -> its 127.0.0.x
    stalls: dict[str, int]  # slow client name -> times it stopped reading
    logs: dict[str, str]  # backend name -> everything it wrote, over all its runs
    machine: dict[str, Any] | None = None
    logdir: Path | None = None  # every server's and publisher's output, kept when there are violations


class Clock:
    """Seconds since the run started, the time base of every record."""

    def __init__(self) -> None:
        self.zero = time.monotonic()
        self.wall_zero = time.time()

    def __call__(self) -> float:
        return time.monotonic() - self.zero


# ---------------------------------------------------------------------------------------- processes


class Backend:
    """A server process on a fixed port, which nginx's upstream lists; restartable on that port."""

    def __init__(self, name: str, kind: str, port: int, env: dict[str, str]) -> None:
        self.name, self.kind, self.port, self.env = name, kind, port, env
        self.process: subprocess.Popen[str] | None = None
        self.output: OutputWatcher | None = None
        self.outputs: list[str] = []  # of earlier runs of this backend
        self.starts = 0
        self.unexpected_exits: list[int] = []

    def command(self) -> list[str]:
        if self.kind == "production":
            return devenv.production_command("127.0.0.1", str(self.port))
        return [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"]

    def start(self) -> None:
        """Start it and return once it listens (blocking: call in a thread)."""
        self.process = spawn(self.command(), self.env)
        self.output = OutputWatcher(self.process)
        self.output.wait_for(LISTENING, seconds=30)
        self.starts += 1

    def stop(self, sig: int) -> None:
        """Signal it, wait for it to exit (killed if it does not), keep what it wrote."""
        if self.process is None or self.output is None:
            return
        if self.process.poll() is not None:
            self.unexpected_exits.append(self.process.returncode)
        stop(self.process, sig, seconds=15)
        self.outputs.append(self.output.drain())
        self.process = self.output = None

    def text(self) -> str:
        return "\n".join(self.outputs)


BULK_SERIES = 32  # echo.protocol's most per frame
BULK_NAME = "bulk_{:02d}_" + "x" * 56  # 64 characters, the longest a series name may be


def bulk_line(number: int) -> str:
    """A stdin line for ``push_data --source stdin``: the biggest frame the protocol allows, ~2.7 KB."""
    values = {BULK_NAME.format(i): round(number + i / 1000 + 0.123456789, 9) for i in range(BULK_SERIES)}
    return json.dumps(values) + "\n"


class Publisher:
    """``manage.py push_data -v 2`` on one topic: every ``published`` line read with its time.

    A ``bulk`` publisher is ``--source stdin``, fed by this process at ``rate`` lines per second with
    the biggest frames the protocol allows, so that a slow reader falls ``CHANNEL_LAYER_CAPACITY``
    behind within seconds: on loopback every TCP socket buffers megabytes (a 64 KB MSS), which the
    small frames of ``--source sine`` would take many minutes to fill. Like a paced source, it skips a
    tick rather than queue lines while it cannot publish (Redis away).
    """

    def __init__(
        self, name: str, topic: str, rate: float, env: dict[str, str], clock: Clock, bulk: bool = False
    ) -> None:
        self.name, self.topic, self.rate, self.env, self.clock = name, topic, rate, env, clock
        self.bulk = bulk
        self.lines: list[Published] = []
        self.text: list[str] = []  # every other line it wrote
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._feeder: threading.Thread | None = None
        self._feeding = threading.Event()
        self.ready = threading.Event()  # this run has said what it pushes (its SIGTERM handler is next)
        self.starts = 0
        self.exits: list[int] = []
        self.died: list[int] = []  # exit codes of runs that ended before they were stopped
        self.summaries: list[str] = []  # its "Stopped after..." line, per run

    def start(self) -> None:
        command = [sys.executable, "manage.py", "push_data", "--topic", self.topic, "-v", "2"]
        self.ready.clear()
        if self.bulk:
            self.process = spawn([*command, "--source", "stdin"], self.env, stdin=subprocess.PIPE)
            self._feeding.set()
            self._feeder = threading.Thread(
                target=self._feed, args=(self.process, len(self.lines)), daemon=True
            )
            self._feeder.start()
        else:
            self.process = spawn([*command, "--source", "sine", "--rate", f"{self.rate:g}"], self.env)
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        self.starts += 1

    def _feed(self, process: subprocess.Popen[str], published_before: int) -> None:
        """Write ``rate`` lines a second to a bulk publisher's stdin (at most 5 unpublished at a time)."""
        assert process.stdin is not None
        interval, next_tick, written = 1.0 / self.rate, time.monotonic(), 0
        while self._feeding.is_set() and process.poll() is None:
            if written - (len(self.lines) - published_before) < 5:
                try:
                    process.stdin.write(bulk_line(written))
                    process.stdin.flush()
                except (OSError, ValueError):  # it exited: a broken pipe, or stdin closed
                    return
                written += 1
            next_tick = max(next_tick + interval, time.monotonic())
            time.sleep(max(0.0, next_tick - time.monotonic()))

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            if match := PUBLISHED_LINE.match(line):
                topic, epoch, seq = match.groups()
                self.lines.append(Published(self.clock(), self.name, topic, epoch, int(seq)))
            else:
                self.text.append(line)
                if line.startswith("Pushing "):
                    self.ready.set()
                elif line.startswith("Stopped after"):
                    self.summaries.append(line)

    def stop(self) -> None:
        """SIGTERM, as docker stop does: it must stop and print its summary.

        A bulk publisher is stopped as a pipeline stops it instead: its input ends.
        """
        if self.process is None:
            return
        if self.process.poll() is not None:
            self.died.append(self.process.returncode)
        if self.bulk and self._feeder is not None and self.process.stdin is not None:
            self._feeding.clear()
            self._feeder.join()
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout(10))
        self.exits.append(stop(self.process, signal.SIGTERM, seconds=15))
        if self._reader is not None:
            self._reader.join(timeout(10))
        self.process = None


# ---------------------------------------------------------------------------------------- clients


@dataclass
class ClientSpec:
    name: str
    kind: str  # steady, reconnecting, slow, flood, sse
    topics: tuple[str, ...]
    address: str


class ChaosClient:
    """A client through nginx that records every frame and close, and reconnects after any close.

    It reconnects after a jittered 0.1-1 s, with ``since`` for every topic it has a position in (the
    last seq of the epoch it is in). Its first connection asks for no history (the run starts every
    client before the first publish); later ones ask for the whole history, which reaches only topics
    it has no position in (after a reset, before the next frame): there, it must start from seq 1.
    """

    def __init__(
        self,
        spec: ClientSpec,
        nginx: Server,
        config: ChaosConfig,
        clock: Clock,
        progress: asyncio.Event,
    ) -> None:
        self.spec, self.nginx, self.config, self.clock, self.progress = spec, nginx, config, clock, progress
        self.rng = random.Random(f"{config.seed}-{spec.name}")
        self.records: list[Record] = []
        self.positions: dict[str, Position | None] = dict.fromkeys(spec.topics)
        self.connected = asyncio.Event()  # set once the first connection is open
        self.quiet = asyncio.Event()  # the tail: no closing on its own, no flooding, no stalls
        self.stall_at: float | None = None  # when a slow client next stops reading
        self.stalls = 0
        self.problems: list[str] = []  # frames it could not read: violations
        self.echoes = 0
        self.presence = 0
        self.refused = 0  # handshakes that failed

    def log(self) -> ClientLog:
        return ClientLog(self.spec.name, self.spec.topics, self.records)

    async def run(self) -> None:
        """Called as a task: connects, reads, reconnects, until cancelled."""
        while True:
            try:
                await self._connection()
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                self.refused += 1
                self.records.append(Close(self.clock(), None, f"{type(exc).__name__}: {exc}"[:200]))
            except websockets.WebSocketException as exc:  # not expected: shown as a problem
                self.problems.append(f"t={self.clock():.3f} {exc!r}")
                self.records.append(Close(self.clock(), None, repr(exc)[:200]))
            self.progress.set()
            await asyncio.sleep(self.rng.uniform(0.1, 1.0))

    def url(self) -> str:
        since = {topic: p for topic, p in self.positions.items() if p is not None}
        history = self.config.history_length if self.connected.is_set() else 0
        query = f"topics={','.join(self.spec.topics)}&history={history}"
        if since:
            query += "&since=" + ",".join(f"{topic}:{seq}:{epoch}" for topic, (epoch, seq) in since.items())
        return self.nginx.ws_url(f"/ws/echo/?{query}")

    async def _connection(self) -> None:
        url = self.url()
        slow = self.spec.kind == "slow"
        sock = await self._socket() if slow else None
        address = {"sock": sock} if sock is not None else {"local_addr": (self.spec.address, 0)}
        async with websockets.connect(
            url,
            origin=self.nginx.origin,  # type: ignore[arg-type]
            max_size=None,
            max_queue=2 if slow else 16,
            ping_interval=None,  # the server pings; a slow reader must not close on its own
            open_timeout=timeout(10),
            **address,
        ) as ws:
            since = {topic: p for topic, p in self.positions.items() if p is not None}
            self.records.append(Connect(self.clock(), since))
            self.connected.set()
            helpers = []
            if self.spec.kind == "flood" and not self.quiet.is_set():
                helpers.append(asyncio.ensure_future(self._flood(ws)))
            if self.spec.kind == "reconnecting" and not self.quiet.is_set():
                helpers.append(asyncio.ensure_future(self._close_later(ws)))
            try:
                await self._read(ws)
            finally:
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
        self.records.append(Close(self.clock(), ws.close_code, ws.close_reason or ""))

    async def _socket(self) -> Any:
        """A connected socket with a small receive buffer, so that a slow reader backs up quickly."""
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.config.slow_receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.slow_receive_buffer)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
            sock.setblocking(False)
            sock.bind((self.spec.address, 0))
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (self.nginx.host, self.nginx.port)), timeout(10)
            )
        except BaseException:
            sock.close()
            raise
        return sock

    async def _read(self, ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                message = await ws.recv()
                self._take(message)
                self.progress.set()
                if self.spec.kind == "slow":
                    await self._stall_when_due()

    async def _stall_when_due(self) -> None:
        """A slow reader: reads for a few seconds, then stops reading for longer, then again."""
        if self.stall_at is None:
            self.stall_at = self.clock() + self.rng.uniform(*self.config.slow_reading)
        if self.clock() < self.stall_at or self.quiet.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.quiet.wait(), self.rng.uniform(*self.config.slow_stall))
        self.stalls += 1
        self.stall_at = self.clock() + self.rng.uniform(*self.config.slow_reading)

    def _take(self, message: str | bytes) -> None:
        """Record what one WebSocket message carried (several frames, newline-separated)."""
        if not isinstance(message, str) or not message.startswith('{"type":'):
            self.echoes += 1
            return
        now = self.clock()
        for line in message.split("\n"):
            try:
                frame = json.loads(line)
                kind = frame["type"]
                if kind == "data":
                    self._data(
                        Data(now, frame["topic"], frame.get("epoch"), frame["seq"], bool(frame.get("replay")))
                    )
                elif kind == "reset":
                    self.records.append(
                        Reset(now, frame["topic"], frame.get("epoch"), frame.get("reason", ""))
                    )
                    if frame["topic"] in self.positions:
                        self.positions[frame["topic"]] = None
                elif kind == "error":
                    self.records.append(Error(now, frame["code"]))
                elif kind == "presence":
                    self.presence += 1
            except (ValueError, KeyError, TypeError) as exc:
                self.problems.append(f"t={now:.3f} unreadable frame {line[:200]!r}: {exc!r}")

    def _data(self, record: Data) -> None:
        self.records.append(record)
        if record.topic not in self.positions or record.epoch is None:
            return
        position = self.positions[record.topic]
        if position is not None and position[0] == record.epoch:
            self.positions[record.topic] = (record.epoch, max(position[1], record.seq))
        else:
            self.positions[record.topic] = (record.epoch, record.seq)

    async def _flood(self, ws: Any) -> None:
        """Send frames as fast as the socket takes them (up to ``flood_rate``) until closed."""
        burst = 50
        with contextlib.suppress(websockets.ConnectionClosed):
            while not self.quiet.is_set():
                for _ in range(burst):
                    await ws.send("flood")
                await asyncio.sleep(burst / self.config.flood_rate)

    async def _close_later(self, ws: Any) -> None:
        await asyncio.sleep(self.rng.uniform(*self.config.own_close))
        if not self.quiet.is_set():
            await ws.close()


class SseChaosClient(ChaosClient):
    """A Server-Sent Events client through nginx, resuming as a browser's ``EventSource`` does: the same
    URL every time (the whole history of a topic it has no position in), and ``Last-Event-ID`` set to
    the last event ``id`` the server sent. Records what it reads as the WebSocket clients do, and each
    connection's ``since`` as the positions that id names (seq 0, "nothing of that epoch yet", is none).
    """

    last_id = ""

    def url(self) -> str:
        query = f"topics={','.join(self.spec.topics)}&history={self.config.history_length}"
        return f"/events/?{query}"

    async def _connection(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.nginx.host, self.nginx.port, local_addr=(self.spec.address, 0)),
            timeout(10),
        )
        try:
            # HTTP/1.0: nginx then sends the body as it comes, unchunked, and closes at its end.
            resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
            host = f"{self.nginx.host}:{self.nginx.port}"
            writer.write(f"GET {self.url()} HTTP/1.0\r\nHost: {host}\r\n{resume}\r\n".encode())
            status_line = await asyncio.wait_for(reader.readline(), timeout(10))
            status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
            while (await asyncio.wait_for(reader.readline(), timeout(10))).strip():
                pass  # the response's headers
            if status != 200:
                self.refused += 1
                self.records.append(Close(self.clock(), status, (await reader.read(300)).decode("latin1")))
                return
            self.records.append(Connect(self.clock(), self._since()))
            self.connected.set()
            await self._events(reader)
            self.records.append(Close(self.clock(), status, "the stream ended"))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _since(self) -> dict[str, Position]:
        since = {}
        for item in filter(None, self.last_id.split(",")):
            topic, _, rest = item.partition(":")
            seq, _, epoch = rest.partition(":")
            if epoch and int(seq) > 0:
                since[topic] = (epoch, int(seq))
        return since

    async def _events(self, reader: asyncio.StreamReader) -> None:
        """Read events until the stream ends: ``data`` frames recorded, ``id`` kept for the next time."""
        data: list[str] = []
        event_id: str | None = None
        while line := (await reader.readline()).decode():
            line = line.rstrip("\r\n")
            if line.startswith("data: "):
                data.append(line[6:])
            elif line.startswith("id: "):
                event_id = line[4:]
            elif not line:
                if event_id is not None:
                    self.last_id = event_id  # as EventSource does, whether or not there was data
                if data:
                    self._take("\n".join(data))
                    self.progress.set()
                data, event_id = [], None


def client_specs(config: ChaosConfig, rng: random.Random) -> list[ClientSpec]:
    """Who follows what: slow readers every topic, the bulk one included; the others a random subset.

    The first steady client follows every topic too, so that each is also checked on a client that
    never closes by itself.
    """
    topics = list(config.publishers)
    everything = (*topics, config.bulk_topic) if config.bulk_rate else tuple(topics)
    kinds = ["slow"] * config.slow + ["flood"] * config.flooders + ["reconnecting"] * config.reconnecting
    kinds += ["sse"] * config.sse
    kinds += ["steady"] * (config.clients - len(kinds))
    specs = []
    for index, kind in enumerate(kinds):
        if kind == "slow" or index in (kinds.index("steady"), kinds.index("sse") if config.sse else -1):
            chosen: tuple[str, ...] = everything
        else:
            chosen = tuple(sorted(rng.sample(topics, rng.randint(1, len(topics)))))
        specs.append(ClientSpec(f"c{index:02d}-{kind}", kind, chosen, f"127.0.0.{20 + index}"))
    return specs


# ---------------------------------------------------------------------------------------- the run


def schedule(config: ChaosConfig, rng: random.Random) -> list[tuple[float, str]]:
    """When each fault happens and of which kind: each kind once (in random order), then at random."""
    moments = []
    moment = config.first_fault
    while moment <= config.duration:
        moments.append(moment)
        moment += rng.uniform(*config.gap)
    if len(moments) < len(FAULT_KINDS):
        raise SystemExit(
            f"--duration {config.duration:g} leaves room for {len(moments)} faults: "
            f"every kind needs one ({len(FAULT_KINDS)}); make it longer or the gaps shorter"
        )
    kinds = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
    kinds += [rng.choice(FAULT_KINDS) for _ in range(len(moments) - len(kinds))]
    return list(zip(moments, kinds, strict=True))


def validate(config: ChaosConfig) -> None:
    """Refuse a run the checker could not judge: one that would publish more than history keeps."""
    rates = {topic: sum(rates) for topic, rates in config.publishers.items()}
    rates[config.bulk_topic] = config.bulk_rate
    topic, rate = max(rates.items(), key=lambda item: item[1])
    most = rate * (config.first_fault + config.duration + config.tail + 60)
    if most > config.history_length:
        raise SystemExit(
            f"{topic} would publish up to {most:,.0f} frames, more than HISTORY_LENGTH "
            f"{config.history_length:,}: history would be trimmed and the checker could not tell a lost "
            "frame from a trimmed one; shorten the run"
        )
    special = config.slow + config.flooders + config.reconnecting + config.sse
    if config.clients < special + 1:
        raise SystemExit(f"at least {special + 1} clients")
    unknown = set(config.backends) - set(BACKEND_KINDS)
    if unknown or not config.backends:
        raise SystemExit(f"backends: unknown {sorted(unknown)}; use {', '.join(BACKEND_KINDS)}")
    schedule(config, random.Random(config.seed))  # room for every kind of fault


def child_env(config: ChaosConfig, redis_url: str) -> dict[str, str]:
    """The environment of every server and publisher: production settings, this run's Redis and limits."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "wsproject.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1",
        "DJANGO_DEBUG": "0",
        "REDIS_URL": redis_url,
        "CHANNEL_LAYER_PREFIX": f"chaos-{config.seed}",
        "CHANNEL_LAYER_CAPACITY": str(config.capacity),
        "HISTORY_LENGTH": str(config.history_length),
        "FORWARDED_ALLOW_IPS": "127.0.0.1",  # nginx connects from there
        "WEB_CONCURRENCY": "1",  # one process per backend: a SIGKILL takes all of it
        "WS_RATE_LIMIT": str(config.rate_limit),
        "WS_RATE_BURST": str(config.rate_limit),
        "WS_RATE_STRIKES": str(config.rate_strikes),
        "PYTHONUNBUFFERED": "1",
        # Nothing here serves static files; an empty directory keeps whitenoise from warning.
        "DJANGO_STATIC_ROOT": tempfile.mkdtemp(prefix="chaos-static-"),
    }


class Chaos:
    """One run: starts everything, injects the faults, waits for the clients, stops everything."""

    def __init__(self, config: ChaosConfig, say: Callable[[str], None]) -> None:
        self.config = config
        self.say = say
        self.rng = random.Random(config.seed)
        self.clock = Clock()
        self.progress = asyncio.Event()
        self.faults: list[Fault] = []
        self.redis = RedisServer(persistent=True)
        self.env = child_env(config, self.redis.url)
        self.backends = [
            Backend(f"{kind}-{index + 1}", kind, free_port(), self.env)
            for index, kind in enumerate(config.backends)
        ]
        self.publishers = [
            Publisher(f"push-{topic}-{index + 1}", topic, rate, self.env, self.clock)
            for topic, rates in config.publishers.items()
            for index, rate in enumerate(rates)
        ]
        if config.bulk_rate:
            bulk = Publisher(
                f"push-{config.bulk_topic}", config.bulk_topic, config.bulk_rate, self.env, self.clock, True
            )
            self.publishers.append(bulk)
        self.clients: list[ChaosClient] = []
        self.nginx_log = ""  # its access log: which backend each WebSocket was on, written when it closed
        self.durations: dict[str, float] = {}
        self.converged = False

    async def run(self, nginx: Server) -> None:
        """Everything between nginx starting and the processes stopping, within a deadline."""
        specs = client_specs(self.config, self.rng)
        self.clients = [
            (SseChaosClient if spec.kind == "sse" else ChaosClient)(
                spec, nginx, self.config, self.clock, self.progress
            )
            for spec in specs
        ]
        tasks = [asyncio.ensure_future(client.run()) for client in self.clients]
        config = self.config
        budget = config.first_fault + config.duration + config.tail + config.converge_seconds + 300
        try:
            async with asyncio.timeout(timeout(budget)):
                await self._run()
        finally:
            for task in tasks:
                task.cancel()
            ended = await asyncio.gather(*tasks, return_exceptions=True)
            for client, outcome in zip(self.clients, ended, strict=True):
                if isinstance(outcome, Exception):  # a bug in the client itself
                    client.problems.append(f"its task failed: {outcome!r}")

    async def _run(self) -> None:
        """Clients first, then publishers, then the faults, the quiet tail, and the wait for the clients."""
        await asyncio.wait_for(
            asyncio.gather(*(client.connected.wait() for client in self.clients)), timeout(30)
        )
        for publisher in self.publishers:
            publisher.start()
        started = self.clock()
        self.durations["startup"] = started
        self.say(f"{len(self.clients)} clients connected, {len(self.publishers)} publishers started")
        for moment, kind in schedule(self.config, self.rng):
            await asyncio.sleep(max(0.0, started + moment - self.clock()))
            await self.inject(kind)
        await asyncio.sleep(max(0.0, started + self.config.duration - self.clock()))
        self.durations["faults"] = self.clock() - started
        for client in self.clients:
            client.quiet.set()
        await asyncio.sleep(self.config.tail)
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in self.publishers))
        tail_end = self.clock()
        self.durations["tail"] = tail_end - started - self.durations["faults"]
        self.converged = await self.wait_for_convergence()
        self.durations["convergence"] = self.clock() - tail_end

    async def inject(self, kind: str) -> None:
        """Inject one fault and wait until its target is back."""
        at = self.clock()
        down = self.rng.uniform(0.2, 3.0) if kind in (REDIS_KEEP, REDIS_EMPTY) else self.rng.uniform(0.0, 2.0)
        if kind in (REDIS_KEEP, REDIS_EMPTY):
            target = "redis"
            self.redis.stop()  # SIGKILL: what the append-only file holds is all that survives
            await asyncio.sleep(down)
            if kind == REDIS_EMPTY:
                self.redis.wipe()
            await asyncio.to_thread(self.redis.start)
        elif kind == SERVER_KILL:
            backend = self.rng.choice(self.backends)
            target = backend.name
            await asyncio.to_thread(backend.stop, signal.SIGKILL)
            await asyncio.sleep(down)
            await asyncio.to_thread(backend.start)
        else:
            # The sine publishers: SIGTERM is how they are stopped (a bulk one's input ends instead).
            publisher = self.rng.choice([p for p in self.publishers if not p.bulk])
            target = publisher.name
            # Not before it handles SIGTERM: a process still starting up dies of it, summary or not.
            await asyncio.to_thread(publisher.ready.wait, timeout(30))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(publisher.stop)
            await asyncio.sleep(down)
            publisher.start()
        fault = Fault(at, kind, target, down, self.clock() - at)
        self.faults.append(fault)
        self.say(f"t={at:7.2f} {kind}: {target} (down {down:.1f} s, back after {fault.took:.1f} s)")

    def targets(self) -> dict[str, Position]:
        """Each topic's final position: what was printed, and frames of its last epoch clients got beyond."""
        finals = final_positions(self.published())
        for client in self.clients:
            for topic, position in client.positions.items():
                if topic in finals and position is not None and position[0] == finals[topic][0]:
                    finals[topic] = (position[0], max(position[1], finals[topic][1]))
        return finals

    def behind(self) -> list[str]:
        targets = self.targets()
        return [
            f"{client.spec.name} {topic} at {client.positions[topic]}, not {targets[topic]}"
            for client in self.clients
            for topic in client.spec.topics
            if topic in targets and client.positions[topic] != targets[topic]
        ]

    async def wait_for_convergence(self) -> bool:
        """Wait until every client is at every topic's final position, or the deadline passes."""
        start = self.clock()
        deadline = start + timeout(self.config.converge_seconds)
        while True:
            self.progress.clear()
            if not (behind := self.behind()):
                self.say(f"every client at every topic's final position {self.clock() - start:.1f} s later")
                return True
            if self.clock() >= deadline:
                self.say("did not converge: " + "; ".join(behind[:5]))
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), deadline - self.clock())

    def published(self) -> list[Published]:
        return sorted((line for p in self.publishers for line in p.lines), key=lambda line: line.t)

    def process_violations(self) -> list[Violation]:
        """What the processes' output and exits say: tracebacks, publishers that did not stop cleanly."""
        found = []
        for backend in self.backends:
            found += self.tracebacks(backend.name, "server", backend.text())
            for code in backend.unexpected_exits:
                found.append(Violation(backend.name, None, "server exited by itself", f"exit code {code}"))
        for publisher in self.publishers:
            found += self.tracebacks(publisher.name, "publisher", "\n".join(publisher.text))
            unclean = [code for code in publisher.exits if code != 0]
            if unclean or publisher.died or len(publisher.summaries) != publisher.starts:
                found.append(
                    Violation(
                        publisher.name,
                        None,
                        "publisher did not stop cleanly",
                        f"exit codes {publisher.exits} ({len(publisher.died)} ended by themselves), "
                        f"{len(publisher.summaries)} summaries for {publisher.starts} runs",
                    )
                )
        for client in self.clients:
            for problem in client.problems:
                found.append(Violation(client.spec.name, None, "unreadable frame", problem))
        return found

    def tracebacks(self, who: str, what: str, text: str) -> list[Violation]:
        """One violation for a process's tracebacks: the first, with the lines before it, and their count."""
        lines = text.splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
        if not starts:
            return []
        first = starts[0]
        shown = lines[max(0, first - 4) : first + 40]
        when = None
        for line in reversed(lines[: first + 1]):  # the run's time of the last log line before it
            if stamp := LOG_TIME.match(line):
                wall = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                when = wall + int(stamp.group(2)) / 1000 - self.clock.wall_zero
                break
        detail = f"{len(starts)} tracebacks; the first, after the lines before it:\n" + "\n".join(shown)
        return [Violation(who, None, f"traceback in {what} output", detail, when)]

    def save_logs(self, directory: Path) -> None:
        """Write what every server and publisher wrote, one file each, for a look after a failure."""
        for backend in self.backends:
            (directory / f"{backend.name}.log").write_text(backend.text())
        for publisher in self.publishers:
            lines = [*publisher.text, *(f"published {p.topic} {p.epoch} {p.seq}" for p in publisher.lines)]
            (directory / f"{publisher.name}.log").write_text("\n".join(lines))
        (directory / "nginx.log").write_text(self.nginx_log)


async def run(config: ChaosConfig, say: Callable[[str], None] = print) -> ChaosRun:
    """Run the chaos described by ``config``; return what happened and what the checker found."""
    validate(config)
    started_at = datetime.now()
    say(f"chaos: seed {config.seed}, backends {', '.join(config.backends)}, {config.duration:g} s of faults")
    nginx_binary = shutil.which(config.nginx) or shutil.which(config.nginx, path="/usr/sbin:/usr/local/sbin")
    if not nginx_binary:
        raise SystemExit(f"no nginx at {config.nginx}: apt-get install -y nginx (or set NGINX=/path/to/it)")
    chaos = Chaos(config, say)
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, chaos.redis.dir, True)
        stack.callback(chaos.redis.stop)
        chaos.redis.start()
        described = await asyncio.to_thread(machine, chaos.redis.url, nginx_binary)
        for backend in chaos.backends:
            stack.callback(backend.stop, signal.SIGKILL)  # only if still running at the end
        await asyncio.gather(*(asyncio.to_thread(backend.start) for backend in chaos.backends))
        for publisher in chaos.publishers:
            stack.callback(publisher.stop)
        nginx = stack.enter_context(start_nginx(nginx_binary, [b.port for b in chaos.backends], workdir))
        await chaos.run(nginx)
        # Gracefully, so that a traceback on the way out shows too.
        await asyncio.gather(*(asyncio.to_thread(b.stop, signal.SIGTERM) for b in chaos.backends))
    chaos.nginx_log = nginx.output.drain()
    logs = [client.log() for client in chaos.clients]
    published = chaos.published()
    result = check(logs, published)
    violations = [*result.violations, *chaos.process_violations()]
    chaos.durations["total"] = chaos.clock()
    logdir = None
    if violations:  # kept for a look: every server's and publisher's output
        chaos.save_logs(workdir)
        logdir = workdir
    elif config.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return ChaosRun(
        config=config,
        faults=chaos.faults,
        published=published,
        clients=logs,
        kinds={client.spec.name: client.spec.kind for client in chaos.clients},
        result=result,
        violations=violations,
        publishers=[_publisher_summary(p) for p in chaos.publishers],
        backends=[
            {"name": b.name, "kind": b.kind, "port": b.port, "starts": b.starts} for b in chaos.backends
        ],
        durations=chaos.durations,
        converged=chaos.converged,
        started_at=started_at,
        wall_zero=chaos.clock.wall_zero,
        addresses={client.spec.name: client.spec.address for client in chaos.clients},
        stalls={client.spec.name: client.stalls for client in chaos.clients if client.spec.kind == "slow"},
        logs={backend.name: backend.text() for backend in chaos.backends},
        machine=described,
        logdir=logdir,
    )


def _publisher_summary(publisher: Publisher) -> dict[str, Any]:
    epochs = list(dict.fromkeys(line.epoch for line in publisher.lines))
    return {
        "name": publisher.name,
        "topic": publisher.topic,
        "rate": publisher.rate,
        "lines": len(publisher.lines),
        "starts": publisher.starts,
        "epochs": epochs,
        "exits": publisher.exits,
    }


# ---------------------------------------------------------------------------------------- the report


def machine(redis_url: str, nginx_binary: str) -> dict[str, Any]:
    """Hardware, versions and the code under test (bench's description, plus nginx's version)."""
    from bench.environment import describe

    described = describe(redis_url)
    found = subprocess.run([nginx_binary, "-v"], capture_output=True, text=True, check=False)
    described["versions"]["nginx"] = found.stderr.strip().rsplit("/", 1)[-1] or "unknown"
    return described


def report(run: ChaosRun, command: str = "") -> str:
    """The run as Markdown: what was done, what was checked, and every violation with its evidence."""
    config, result = run.config, run.result
    faults = Counter(fault.kind for fault in run.faults)
    verdict = "PASS" if not run.violations else "FAIL"
    lines = [
        f"# Chaos run, {run.started_at:%Y-%m-%d %H:%M}",
        "",
        f"**{verdict}: {len(run.violations)} violations** in {result.frames_checked:,} frames checked over "
        f"{len(run.clients)} clients, with {len(run.faults)} faults injected; seed {config.seed}.",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`; the same seed repeats the fault schedule (not its timing).", ""]
    lines += [
        "## Method",
        "",
        "- Backends behind the repo's nginx config (`deploy/nginx/`), on fixed loopback ports, DEBUG off: "
        + ", ".join(f"{b['name']} on :{b['port']} ({b['starts']} starts)" for b in run.backends)
        + ". "
        + "; ".join(f"{kind}: {BACKEND_KINDS[kind]}" for kind in sorted(set(config.backends)))
        + ".",
        "- Redis: its own `redis-server` with an append-only file synced on every write, killed (SIGKILL) "
        "and restarted on the same port, with its files or without them.",
        f"- Settings: `CHANNEL_LAYER_CAPACITY={config.capacity}`, `HISTORY_LENGTH={config.history_length}` "
        f"(nothing is trimmed), `WS_RATE_LIMIT={config.rate_limit}`, `WS_RATE_BURST={config.rate_limit}`, "
        f"`WS_RATE_STRIKES={config.rate_strikes}`.",
        "- Publishers: `manage.py push_data --source sine --topic T --rate R -v 2`, every `published` line "
        "read with its time; stopped and restarted with SIGTERM. "
        f"{config.bulk_topic}: `push_data --source stdin` fed {config.bulk_rate:g} lines/s of the biggest "
        "frame the protocol allows (32 series, ~2.7 KB), so that a reader that stops falls "
        "`CHANNEL_LAYER_CAPACITY` behind within seconds (stopped by ending its input).",
        f"- Clients ({len(run.clients)}, through nginx, each from its own 127.0.0.x): "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(run.kinds.values()).items()))
        + f". Reconnecting ones close on their own after {config.own_close[0]:g}-{config.own_close[1]:g} s; "
        f"slow ones read for {config.slow_reading[0]:g}-{config.slow_reading[1]:g} s, then stop reading for "
        f"{config.slow_stall[0]:g}-{config.slow_stall[1]:g} s (receive buffer {config.slow_receive_buffer} "
        "bytes, MSS 1460); the flooder sends up to {config.flood_rate:g} frames/s. "
        "Every client reconnects after any close (0.1-1 s), with `since` for each topic it has a "
        "position in.",
        f"- Faults: every {config.gap[0]:g}-{config.gap[1]:g} s from t={config.first_fault:g} s for "
        f"{config.duration:g} s, each kind at least once; then {config.tail:g} s of publishing without "
        f"faults, then the publishers stop and the run waits up to {config.converge_seconds:g} s for "
        "every client to reach each topic's final position.",
        "- The checker (`scripts.chaos_check`) walks each client's records per topic: no gap, no duplicate, "
        "no frame of a new epoch without a reset, no reset to the epoch the client is in, every epoch from "
        "seq 1, and each client at each topic's final position at the end.",
        "",
        "## Faults injected",
        "",
        "| kind | count |",
        "|---|---|",
        *(f"| {kind} | {faults.get(kind, 0)} |" for kind in FAULT_KINDS),
        "",
        "| t (s) | fault | target | down (s) | back after (s) |",
        "|---|---|---|---|---|",
        *(f"| {f.t:.1f} | {f.kind} | {f.target} | {f.down:.1f} | {f.took:.1f} |" for f in run.faults),
        "",
        "## Topics and publishers",
        "",
        "| topic | final epoch:seq | epochs | frames received that no publisher printed |",
        "|---|---|---|---|",
    ]
    for topic, (epoch, seq) in sorted(result.finals.items()):
        epochs = list(dict.fromkeys(line.epoch for line in run.published if line.topic == topic))
        unrecorded = {e: seqs for (t, e), seqs in result.unrecorded.items() if t == topic}
        shown = "; ".join(f"{e}: {_seqs(seqs)}" for e, seqs in unrecorded.items()) or "none"
        lines.append(f"| {topic} | {epoch}:{seq} | {len(epochs)} | {shown} |")
    lines += [
        "",
        "| publisher | topic | rate/s | published | runs | exit codes |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p['name']} | {p['topic']} | {p['rate']:g} | {p['lines']:,} | {p['starts']} | "
            f"{', '.join(map(str, p['exits']))} |"
            for p in run.publishers
        ),
        "",
        "## Clients",
        "",
        "| client | kind | topics | connections | closes by code | frames checked | replayed | resets "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for log in run.clients:
        summary = result.clients[log.name]
        closes = ", ".join(f"{code or 'failed'}: {n}" for code, n in sorted(summary.closes.items(), key=str))
        errors = ", ".join(f"{code}: {n}" for code, n in sorted(summary.errors.items())) or "-"
        kind = run.kinds[log.name]
        if log.name in run.stalls:
            kind += f" ({run.stalls[log.name]} stalls)"
        lines.append(
            f"| {log.name} | {kind} | {', '.join(log.topics)} | {summary.connections} | "
            f"{closes or '-'} | {summary.frames:,} | {summary.replayed:,} | {summary.resets} | {errors} |"
        )
    lines += ["", f"## Violations: {len(run.violations)}", ""]
    if not run.violations:
        lines.append("None.")
    records = {log.name: log.records for log in run.clients}
    for number, violation in enumerate(run.violations[:50], 1):
        where = f"t={violation.t:.3f} s" if violation.t is not None else "at the end"
        lines += [
            f"{number}. **{violation.rule}**: {violation.who}, topic {violation.topic or '-'}, {where}:"
        ]
        if "\n" in violation.detail:
            lines += ["   ```", *(f"   {line}" for line in violation.detail.splitlines()), "   ```", ""]
        else:
            lines += [f"   {violation.detail}", ""]
        before = [f for f in run.faults if violation.t is not None and f.t <= violation.t]
        if before:
            last = before[-1]
            lines += [f"   Last fault before it: t={last.t:.1f} s, {last.kind} ({last.target}).", ""]
        if violation.index is not None and violation.who in records:
            lines += [
                "   ```",
                *(f"   {line}" for line in excerpt(records[violation.who], violation.index, violation.topic)),
                "   ```",
                "",
            ]
        if violation.who in run.addresses and violation.t is not None:
            said = server_lines(run, run.addresses[violation.who], run.wall_zero + violation.t)
            if said:
                lines += ["   What the servers logged about this client before it:", "", "   ```"]
                lines += [*(f"   {line}" for line in said), "   ```", ""]
    if len(run.violations) > 50:
        lines.append(f"... and {len(run.violations) - 50} more (the first 50 are shown).")
    if run.logdir is not None:
        lines += ["", f"Every server's and publisher's output: `{run.logdir}/`."]
    durations = run.durations
    lines += [
        "",
        "## Durations",
        "",
        ", ".join(f"{name} {seconds:.1f} s" for name, seconds in durations.items())
        + ("" if run.converged else " (the clients did not all converge)"),
        "",
    ]
    if run.machine:
        m = run.machine
        versions = ", ".join(f"{name} {version}" for name, version in m["versions"].items())
        lines += [
            "## Machine and versions",
            "",
            f"- {m['nproc']} cores ({m['cpu_model']}), {m['memory_gb']} GB memory, Linux {m['kernel']}; "
            f"load before: {', '.join(f'{x:.2f}' for x in m['load_before'])} (the machine is shared)",
            f"- {versions}",
            f"- code: {m['code']}",
            "",
        ]
    return "\n".join(lines)


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def server_lines(run: ChaosRun, address: str, until: float, count: int = 8) -> list[str]:
    """The last lines the servers logged about ``address`` (as the client or nginx forwarded it) up to
    ``until`` (a time.time()), each prefixed with the server's name."""
    mention = re.compile(re.escape(address) + r"(?!\d)")
    found: list[tuple[float, str]] = []
    for name, text in run.logs.items():
        for line in text.splitlines():
            stamp = LOG_TIME.match(line)
            if not stamp or not mention.search(line):
                continue
            when = (
                datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                + int(stamp.group(2)) / 1000
            )
            if when <= until + 1.0:
                found.append((when, f"{name}: {line}"))
    return [line for _, line in sorted(found)[-count:]]


def _seqs(seqs: Sequence[int]) -> str:
    shown = ", ".join(map(str, seqs[:10]))
    return shown + (f" ... ({len(seqs)})" if len(seqs) > 10 else "")


def summary(run: ChaosRun) -> str:
    """A few lines for the terminal."""
    faults = Counter(fault.kind for fault in run.faults)
    by_kind = ", ".join(f"{kind}: {faults[kind]}" for kind in FAULT_KINDS)
    lines = [
        f"seed {run.config.seed}: {len(run.violations)} violations, "
        f"{run.result.frames_checked:,} frames checked, {len(run.faults)} faults ({by_kind})",
    ]
    lines += [f"  {v.rule}: {v.who} {v.topic or ''} {v.detail[:200]}" for v in run.violations[:20]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[ChaosConfig, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ChaosConfig(seed=0)
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (default: random)")
    parser.add_argument(
        "--backends",
        default=",".join(defaults.backends),
        help=f"comma-separated backends behind nginx, each one of {', '.join(BACKEND_KINDS)} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=defaults.duration, help="seconds of faults (%(default)s)"
    )
    parser.add_argument("--clients", type=int, default=defaults.clients, help="(%(default)s)")
    parser.add_argument(
        "--capacity", type=int, default=defaults.capacity, help="CHANNEL_LAYER_CAPACITY (%(default)s)"
    )
    parser.add_argument(
        "--bulk-rate",
        type=float,
        default=defaults.bulk_rate,
        help="frames/s of big frames for the slow readers; 0: none (%(default)s)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where the dated report is written (default: bench/results/)",
    )
    parser.add_argument("--no-report", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    backends = tuple(name.strip() for name in args.backends.split(",") if name.strip())
    unknown = set(backends) - set(BACKEND_KINDS)
    if unknown or not backends:
        parser.error(f"--backends: unknown {sorted(unknown)}; use {', '.join(BACKEND_KINDS)}")
    config = ChaosConfig(
        backends=backends,
        duration=args.duration,
        clients=args.clients,
        capacity=args.capacity,
        bulk_rate=args.bulk_rate,
    )
    if args.seed is not None:
        config.seed = args.seed
    try:
        validate(config)
    except SystemExit as exc:
        parser.error(str(exc))
    return config, None if args.no_report else args.results


def main(argv: Sequence[str] | None = None) -> int:
    """Run, write the report, print a summary; 1 if anything broke the contract."""
    config, results = parse_args(argv)
    run_ = asyncio.run(run(config))
    command = "python -m scripts.chaos " + " ".join(sys.argv[1:] if argv is None else argv)
    print(summary(run_))
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"{run_.started_at:%Y-%m-%d-%H%M}-chaos.md"
        path.write_text(report(run_, command.strip()))
        print(f"report: {path}")
    return 1 if run_.violations else 0


if __name__ == "__main__":
    sys.exit(main())
