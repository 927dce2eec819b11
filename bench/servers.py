"""The servers under test: the plain ``websockets`` baseline and the project's production server.

The project's server is started the way ``make serve`` starts it (``scripts.devenv``: ``serve()``
and ``production_command()``): static files collected, ``DJANGO_DEBUG=0``, a random secret,
``DJANGO_ALLOWED_HOSTS=localhost,127.0.0.1`` and the Redis that devenv finds, plus a channel-layer
prefix of its own per server started, so that no other process on the same Redis (nor an earlier
measurement) can publish into a measurement.
The command is selectable so that server choices can be compared:

* ``default``: whatever ``production_command()`` returns today;
* ``daphne``: daphne as ``manage.py runserver`` runs it (the development server);
* ``uvicorn``: uvicorn on uvloop + httptools with ``--ws websockets-sansio`` and ``--workers N``.

Each server reports the CPU seconds and resident memory of its whole process tree (uvicorn's workers
are children of its supervisor).
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil
from websockets.sync.client import connect

from scripts import devenv
from scripts.ports import free_port

ROOT = Path(__file__).resolve().parent.parent

WS_PATH = "/ws/echo/?topics=prices"
PROJECT_TOPIC = "prices"
BASELINE_TOPIC = "bench"
SERVER_CHOICES = ("default", "daphne", "uvicorn")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class ServerFailed(RuntimeError):
    """Raised when a server does not start, or its publisher fails; carries the server's last output."""


@dataclass(frozen=True)
class ServerSpec:
    """Which server to run: ``baseline``, or the project under ``default``, ``daphne`` or ``uvicorn``."""

    kind: str
    # Server processes; 0 for the default server means WEB_CONCURRENCY=auto, as ``make serve`` runs it.
    workers: int = 1

    @property
    def is_baseline(self) -> bool:
        return self.kind == "baseline"

    @property
    def topic(self) -> str:
        return BASELINE_TOPIC if self.is_baseline else PROJECT_TOPIC

    @property
    def is_auto(self) -> bool:
        """The default server with ``WEB_CONCURRENCY=auto``: one worker per available CPU, capped."""
        return self.kind == "default" and self.workers == 0

    def web_concurrency(self) -> str:
        """``WEB_CONCURRENCY`` for the default server: ``auto``, or the number of workers."""
        return "auto" if self.is_auto else str(self.workers)

    def command(self, port: int) -> list[str]:
        """The command line that serves on 127.0.0.1:``port``."""
        python = sys.executable
        if self.is_baseline:
            return [python, "-m", "bench.baseline_server", "--port", str(port)]
        if self.kind == "default":
            return devenv.production_command("127.0.0.1", str(port))
        if self.kind == "daphne":
            # As `make run` serves: daphne through runserver, with the project's fixes to it.
            return [python, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
        if self.kind == "uvicorn":
            uvicorn = str(Path(python).with_name("uvicorn"))
            return [
                uvicorn, "wsproject.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
                "--no-access-log", "--workers", str(self.workers),
            ]  # fmt: skip
        raise ValueError(f"unknown server {self.kind!r}: choose baseline or one of {SERVER_CHOICES}")

    def label(self) -> str:
        """A short name for tables: ``baseline``, ``uvicorn x2``, ``uvicorn (make serve) auto=2``..."""
        if self.is_baseline:
            return "baseline (websockets)"
        name = Path(self.command(0)[0]).name
        if name.startswith("python"):
            name = "daphne (runserver)" if self.kind == "daphne" else "uvicorn (make serve)"
        if self.is_auto:
            return f"{name} auto={auto_workers()}"
        if self.kind == "default":  # make serve itself runs auto: say how many this one runs
            return f"{name} x{self.workers}"
        return f"{name} x{self.workers}" if name.startswith("uvicorn") and self.workers > 1 else name


def auto_workers() -> int:
    """How many workers ``WEB_CONCURRENCY=auto`` starts here (the server's own rule, asked, not copied)."""
    from wsproject.server import worker_count  # imports uvicorn and the app's settings: only when asked

    return worker_count("auto")


@dataclass
class ProjectEnvironment:
    """What ``make serve`` sets up once per run: Redis, settings, collected static files."""

    redis_url: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def open(cls) -> Iterator[ProjectEnvironment]:
        """Find (or embed) Redis like devenv does, collect static files, and yield the environment."""
        with tempfile.TemporaryDirectory(prefix="bench-static-") as static_root, devenv.redis_url() as url:
            env = {
                **os.environ,
                "REDIS_URL": url,
                "DJANGO_SETTINGS_MODULE": "wsproject.settings",
                "DJANGO_DEBUG": "0",
                "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1",
                "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
                "DJANGO_STATIC_ROOT": static_root,
                "PYTHONUNBUFFERED": "1",
                # The echo scenarios are floods by design: measure capacity, not the flood limit.
                "WS_RATE_LIMIT": "0",
            }
            subprocess.run(
                [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
                env=env,
                cwd=ROOT,
                check=True,
            )
            yield cls(redis_url=url, env=env)


class RunningServer:
    """A started server process: where it listens, what it costs, and how to publish to its clients."""

    def __init__(self, spec: ServerSpec, env: dict[str, str], layer_prefix: str | None = None) -> None:
        self.spec = spec
        # A channel-layer prefix of its own (unless replicas share one): nothing published for an
        # earlier server (history, seq counters, late frames) reaches this one, so every
        # measurement's seq starts at 1.
        self.env = {**env, "CHANNEL_LAYER_PREFIX": layer_prefix or new_layer_prefix()}
        if spec.kind == "default":
            # make serve picks a worker count from the CPUs (auto); a measurement says which it runs.
            self.env["WEB_CONCURRENCY"] = spec.web_concurrency()
        self.port = free_port()
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self._published: threading.Event = threading.Event()
        self.process = subprocess.Popen(
            spec.command(self.port),
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))
            if line.startswith("published "):
                self._published.set()

    def url(self, path: str = WS_PATH) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until a WebSocket handshake and one echo succeed (uvicorn binds before its workers run)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self.failed(f"exited with {self.process.returncode} before it was ready")
            try:
                with connect(self.url(), open_timeout=2, close_timeout=1) as probe:
                    probe.send("ready?")
                    if probe.recv(timeout=2) == "ready?":
                        return
            except Exception:  # any failure means "not yet"
                if time.monotonic() > deadline:
                    raise self.failed(f"not ready after {timeout:.0f} s") from None
            time.sleep(0.1)

    def failed(self, why: str) -> ServerFailed:
        return ServerFailed(f"{self.spec.label()} {why}; its last output:\n" + "\n".join(self.output))

    def tree(self) -> list[psutil.Process]:
        """The server process and all its descendants (uvicorn's workers), each once."""
        try:
            root = psutil.Process(self.process.pid)
            return unique([root, *root.children(recursive=True)])
        except psutil.Error:
            return []

    def workers(self) -> list[psutil.Process]:
        """The processes that hold connections: uvicorn's workers, or the server itself if it has none."""
        tree = self.tree()
        return [p for p in tree[1:] if is_worker(p)] or tree[:1]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the whole process tree (from /proc), each process once."""
        return tree_cpu_seconds(self.tree())

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree, in bytes, each process once."""
        return tree_rss_bytes(self.tree())

    def publish(self, rate: float, count: int, timeout: float) -> None:
        """Publish ``count`` data frames at ``rate`` per second and return when the publisher is done.

        Baseline: its in-process broadcast. Project: ``manage.py push_data --source sine``, the
        project's own publisher, through Redis and the channel layer.
        """
        if self.spec.is_baseline:
            assert self.process.stdin is not None
            self._published.clear()
            self.process.stdin.write(f"publish {rate} {count}\n")
            self.process.stdin.flush()
            if not self._published.wait(timeout):
                raise self.failed(f"did not finish publishing within {timeout:.0f} s")
            return
        command = [
            sys.executable, "manage.py", "push_data", "--source", "sine",
            "--rate", f"{rate:g}", "--count", str(count), "--topic", PROJECT_TOPIC,
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise ServerFailed(f"push_data failed ({done.returncode}):\n{done.stderr}")

    def stop(self) -> None:
        """SIGINT the server (uvicorn passes it to its workers); kill what is left after a grace period."""
        processes = self.tree()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for process in processes[1:]:
            with contextlib.suppress(psutil.Error):
                process.kill()


def unique(processes: list[psutil.Process]) -> list[psutil.Process]:
    """``processes`` without repeats (by pid), in order: a process is counted once however it was found."""
    found: dict[int, psutil.Process] = {}
    for process in processes:
        found.setdefault(process.pid, process)
    return list(found.values())


def tree_cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds so far of ``processes``, each pid once."""
    total = 0.0
    for process in unique(processes):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def tree_rss_bytes(processes: list[psutil.Process]) -> int:
    """Resident memory of ``processes``, each pid once, in bytes."""
    total = 0
    for process in unique(processes):
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def is_worker(process: psutil.Process) -> bool:
    """A uvicorn worker (a multiprocessing child), not a helper such as multiprocessing's resource tracker."""
    with contextlib.suppress(psutil.Error):
        return "resource_tracker" not in " ".join(process.cmdline())
    return False


def new_layer_prefix() -> str:
    return "bench-" + uuid.uuid4().hex[:12]


class Serving(Protocol):
    """What a scenario measures: one server, or several behind a proxy (``bench.scale.Balanced``)."""

    spec: ServerSpec

    def url(self, path: str = WS_PATH) -> str: ...
    def cpu_seconds(self) -> float: ...
    def rss_bytes(self) -> int: ...
    def publish(self, rate: float, count: int, timeout: float) -> None: ...


@contextlib.contextmanager
def running(
    spec: ServerSpec, project: ProjectEnvironment, layer_prefix: str | None = None
) -> Iterator[RunningServer]:
    """Start the server, wait until it echoes, yield it, and stop it afterwards."""
    server = RunningServer(spec, project.env, layer_prefix)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
