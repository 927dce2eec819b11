"""The load generator's controller: several ``bench.client`` worker processes, driven in lock step.

A job is split into one share per worker; every worker connects its share and reports ready before
any of them is told to go, so that measurements start with every client in place. The controller also
measures the workers' CPU over a measurement, to report beside the server's: a load generator that is
itself at 100 % of its cores measures itself, not the server.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
Message = dict[str, Any]


class WorkerDied(RuntimeError):
    """Raised when a worker exits or says nothing within the time allowed."""


class _WorkerProcess:
    """One ``python -m bench.client`` process and a thread that queues its output lines."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.client"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[Message | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, message: Message) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def expect(self, event: str, timeout: float) -> Message:
        try:
            message = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerDied(f"load-generator worker sent no {event!r} within {timeout:.0f} s") from None
        if message is None or message.get("event") != event:
            raise WorkerDied(f"load-generator worker exited or answered {message!r} instead of {event!r}")
        return message


def split(total: int, parts: int) -> list[int]:
    """``total`` clients as evenly as possible over ``parts`` workers."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class LoadGenerator:
    """Worker processes that run one job at a time; use as a context manager to stop them after."""

    def __init__(self, workers: int) -> None:
        self.workers = [_WorkerProcess() for _ in range(max(1, workers))]
        self._active: list[_WorkerProcess] = []
        self._cpu_start = 0.0

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the workers' input (they exit when it ends) and wait for them."""
        for worker in self.workers:
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        for worker in self.workers:
            try:
                worker.process.wait(10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    def prepare(self, jobs: Sequence[Message], timeout: float) -> list[Message]:
        """Hand one job to each of the first ``len(jobs)`` workers; wait until all are ready."""
        if len(jobs) > len(self.workers):
            raise ValueError(f"{len(jobs)} jobs for {len(self.workers)} workers")
        self._active = list(self.workers[: len(jobs)])
        for worker, job in zip(self._active, jobs, strict=True):
            worker.send(job)
        return [worker.expect("ready", timeout) for worker in self._active]

    def go(self, message: Message) -> None:
        """Start the measurement on every ready worker and note their CPU time."""
        self._cpu_start = self.cpu_seconds()
        for worker in self._active:
            worker.send({"op": "go", **message})

    def tell(self, message: Message) -> None:
        """Send a control line (such as ``published``) to every worker in the current job."""
        for worker in self._active:
            worker.send(message)

    def results(self, timeout: float) -> tuple[list[Message], float]:
        """Wait for every worker's result; return them with the CPU seconds the workers used since go."""
        results = [worker.expect("result", timeout) for worker in self._active]
        return results, self.cpu_seconds() - self._cpu_start

    def rss_bytes(self) -> int:
        """Resident memory of all workers, in bytes."""
        total = 0
        for pid in self.pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by all workers."""
        total = 0.0
        for pid in self.pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total
