"""Real processes for tests: start them, read their output, wait on what they say, ask them over HTTP.

Every wait is on an event (a line of output, a frame, a process exit) with a timeout scaled by
``TEST_TIMEOUT_FACTOR`` from the environment; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts import devenv

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_FACTOR = float(os.environ.get("TEST_TIMEOUT_FACTOR", "1"))
# Random choices in tests come from this seed, so that a failure can be replayed (TEST_SEED=...).
SEED = int(os.environ.get("TEST_SEED", "20261128"))


def seeded_random(salt: str) -> random.Random:
    """A random generator for one test, from ``SEED`` and the test's own ``salt``."""
    return random.Random(f"{SEED}:{salt}")


def timeout(seconds: float) -> float:
    """A timeout in seconds, scaled for slow machines by TEST_TIMEOUT_FACTOR."""
    return seconds * TIMEOUT_FACTOR


class OutputWatcher:
    """Collects a process's combined output line by line (on a thread) and waits for patterns."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, seconds: float = 10.0) -> re.Match[str]:
        """Wait for a line matching ``pattern`` (searched); fail with the output so far if none."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        try:
            while True:
                received = self._queue.get(timeout=timeout(seconds))
                if received is None:
                    raise AssertionError(f"process exited before printing /{pattern}/:\n{self.text()}")
                self.lines.append(received)
                if match := regex.search(received):
                    return match
        except queue.Empty:
            raise AssertionError(f"no line matching /{pattern}/ within {seconds} s:\n{self.text()}") from None

    def wait_for_count(self, pattern: str, count: int, seconds: float = 10.0) -> None:
        """Wait until ``count`` lines have matched ``pattern``."""
        regex = re.compile(pattern)
        try:
            while sum(1 for line in self.lines if regex.search(line)) < count:
                line = self._queue.get(timeout=timeout(seconds))
                if line is None:
                    raise AssertionError(f"process exited before {count} lines matched /{pattern}/")
                self.lines.append(line)
        except queue.Empty:
            raise AssertionError(f"fewer than {count} lines matched /{pattern}/ in {seconds} s") from None

    def drain(self, seconds: float = 10.0) -> str:
        """Wait for the process to finish writing; return everything it wrote."""
        self._thread.join(timeout(seconds))
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return self.text()

    def text(self) -> str:
        """Everything the process has written so far (what was read already, without waiting)."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # keep the end marker for wait_for()
                break
            self.lines.append(line)
        return "\n".join(self.lines)


def spawn(command: Sequence[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start a process in the project directory with its stdout and stderr merged, as text."""
    return subprocess.Popen(
        list(command),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def stop(process: subprocess.Popen[str], sig: int = signal.SIGINT, seconds: float = 10.0) -> int:
    """Signal a process and wait for it to exit; kill it if it does not. Returns its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout(seconds))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Server:
    """A running server process and where to reach it."""

    process: subprocess.Popen[str]
    output: OutputWatcher
    port: int
    host: str = "127.0.0.1"

    def http_url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def ws_url(self, path: str = "/ws/echo/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"


SERVER_COMMANDS = {
    # What `make run` serves (daphne), and what `make serve`, the Dockerfile and compose run (uvicorn).
    "runserver": [sys.executable, "manage.py", "runserver", "127.0.0.1:0", "--noreload"],
    "production": devenv.production_command("127.0.0.1", "0"),
}

# daphne's and uvicorn's "ready" lines; the group is the port actually bound (servers start on port 0).
LISTENING = r"(?:Listening on TCP address [\d.]+|Uvicorn running on http://[\d.]+):(\d+)"


@contextlib.contextmanager
def start_server(command: Sequence[str], env: dict[str, str], ready: str = LISTENING) -> Iterator[Server]:
    """Start a server process, wait until it says it listens, yield it, and stop it afterwards.

    ``ready`` is a pattern whose first group is the port the server listens on.
    """
    process = spawn(command, env)
    output = OutputWatcher(process)
    try:
        port = int(output.wait_for(ready, seconds=30).group(1))
        yield Server(process=process, output=output, port=port)
    finally:
        stop(process)


def http_get(url: str) -> tuple[int, str]:
    """GET ``url``; return its status and body, for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout(10)) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(server: Server, line_start: str) -> float:
    """The sum of the server's /metrics values on lines starting with ``line_start``."""
    status, text = http_get(server.http_url("/metrics"))
    assert status == 200
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)
