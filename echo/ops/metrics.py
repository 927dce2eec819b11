"""Counters of the server, exposed at ``/metrics`` through ``prometheus_client``.

Counting stays a dict lookup and an add (``inc``), cheap enough for every delivered message: a
``prometheus_client`` counter takes a lock per increment, and in multi-process mode writes a shared
file. The totals reach ``prometheus_client`` off that path, in one of two ways:

- one process (``WEB_CONCURRENCY`` 1, the development server): a collector reads the counts when
  scraped;
- several workers: the supervisor gives them a shared directory (``share_between_workers``); each
  worker writes its deltas into real ``prometheus_client`` counters there every second and before it
  answers a scrape, so one scrape of any worker sums every worker (the others up to a second old).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import prometheus_client
import psutil
from prometheus_client import multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

# name -> help text; every counter is listed here so /metrics shows it from the start, at 0.
COUNTERS = {
    "ws_connections_total": "WebSocket connections accepted",
    "ws_refused_total": "WebSocket connections refused after the handshake, by reason",
    "ws_frames_in_total": "Frames received from clients, by kind",
    "ws_frames_out_total": "Frames sent to clients (one frame may carry several messages)",
    "ws_messages_relayed_total": "Pushed messages relayed to clients",
    "ws_messages_replayed_total": "Messages replayed from history",
    "ws_resets_total": "Reset frames sent: a client's view of a topic could not be continued",
    "ws_dropped_total": "Frames or messages dropped, by reason",
    "ws_closed_total": "Connections the server closed, by close code",
    "ws_errors_total": "Errors handling a connection",
    "ws_aborted_total": "Connections aborted while being closed (still sending, or not ending), by reason",
    "ws_handshakes_refused_total": "WebSocket handshakes refused before the app saw them, by reason",
    "ws_revocations_failed_total": "Revocations that could not be sent to the sockets they close",
    "http_refused_total": "HTTP requests refused before a view ran (foreign Host, slow headers), by reason",
    "http_aborted_total": "HTTP connections aborted: the client stopped reading its response, by reason",
    "sse_connections_total": "Server-Sent Events streams started (GET /events/)",
    "sse_refused_total": "Event streams refused before they started (an HTTP status), by reason",
    "sse_closed_total": "Event streams the server ended, by reason",
    "sse_events_out_total": "SSE events sent (a frame each; comments not counted)",
}

LABEL_NAMES = {
    "ws_refused_total": "reason",
    "ws_frames_in_total": "kind",
    "ws_dropped_total": "reason",
    "ws_closed_total": "code",
    "ws_errors_total": "kind",
    "ws_aborted_total": "reason",
    "ws_handshakes_refused_total": "reason",
    "http_refused_total": "reason",
    "http_aborted_total": "reason",
    "sse_refused_total": "reason",
    "sse_closed_total": "reason",
}

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Set by the production server's supervisor for its workers (see share_between_workers).
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# The names of prometheus_client's multi-process files (gauge_live<mode>_<pid>.db) are read here to
# find dead workers: checked by tests/test_internals_app.py against this version (requirements.txt's
# pin), and at startup (wsproject/versions.py).
TESTED = {"prometheus-client": "0.26.0"}
PUSH_SECONDS = 1.0

counts: Counter[tuple[str, str]] = Counter()
_worker_exporter: WorkersExporter | None = None


class HotCounts:
    """The counters of every pushed frame, kept as attributes: ``hot_counts.frames_out += 1`` costs
    less than ``inc`` (a key to build and hash), and runs once per connection for every message."""

    __slots__ = ("frames_out", "messages_relayed")

    def __init__(self) -> None:
        self.frames_out = 0  # ws_frames_out_total
        self.messages_relayed = 0  # ws_messages_relayed_total


hot_counts = HotCounts()


def inc(name: str, label: str = "", amount: int = 1) -> None:
    """Add ``amount`` to counter ``name`` (with one label value, the reason or kind, if any)."""
    counts[(name, label)] += amount


def totals() -> dict[tuple[str, str], int]:
    """Every count so far in this process, ``hot_counts`` included: (name, label) -> total."""
    found = dict(counts)  # one C-level copy: the event loop's thread may add keys meanwhile
    found[("ws_frames_out_total", "")] = found.get(("ws_frames_out_total", ""), 0) + hot_counts.frames_out
    relayed = ("ws_messages_relayed_total", "")
    found[relayed] = found.get(relayed, 0) + hot_counts.messages_relayed
    return found


@dataclass(frozen=True)
class Reading:
    """A gauge's value in this process, read when scraped (and every second with several workers).

    ``since_start``: a total since the process started (summed over every worker that ran, exited
    ones included); otherwise a value of now (summed over the workers running now).
    """

    name: str
    help: str
    value: float
    since_start: bool = False


Readings = Callable[[], Iterable[Reading]]


class Exporter(Protocol):
    def render(self) -> bytes:
        """The Prometheus text exposition (``CONTENT_TYPE``). Called on each scrape."""
        ...


def exporter(readings: Readings) -> Exporter:
    """The exporter for this process: over several workers when the supervisor set that up.

    Called when the application is built. A worker has one ``WorkersExporter`` whatever the number of
    calls (two would each push the same counts).
    """
    global _worker_exporter
    path = os.environ.get(MULTIPROC_DIR)
    if not path:
        return ProcessExporter(readings)
    if _worker_exporter is None:
        _worker_exporter = WorkersExporter(readings, path)
    return _worker_exporter


def share_between_workers(workers: int) -> None:
    """Called by the production server's supervisor before it starts ``workers`` worker processes.

    With more than one, the workers write their metrics to files in ``PROMETHEUS_MULTIPROC_DIR``
    (inherited from here): the operator's directory, or else a fresh temporary one, removed at exit.
    It is emptied first, since files left by an earlier run would be added to this one's counts.
    """
    if workers <= 1:
        os.environ.pop(MULTIPROC_DIR, None)  # one process counts in memory
        return
    path = os.environ.get(MULTIPROC_DIR)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = os.environ[MULTIPROC_DIR] = tempfile.mkdtemp(prefix="wsdemo-metrics-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    logger.info("Metrics of %d workers are shared through %s (%s)", workers, path, MULTIPROC_DIR)


def _counter_families(totals: Mapping[tuple[str, str], float]) -> Iterator[Metric]:
    """Every counter, from (name, label) -> total; a counter never counted shows 0."""
    for name, help_text in COUNTERS.items():
        family = Metric(name.removesuffix("_total"), help_text, "counter")
        key = LABEL_NAMES.get(name)
        for (counted, label), value in sorted(totals.items()):
            if counted == name:
                family.add_sample(name, {key: label} if key and label else {}, value)
        if not family.samples:
            family.add_sample(name, {}, 0)
        yield family


def _gauge_family(name: str, help_text: str, value: float) -> Metric:
    family = Metric(name, help_text, "gauge")
    family.add_sample(name, {}, value)
    return family


class ProcessExporter:
    """One process: its counts and readings, read when scraped."""

    def __init__(self, readings: Readings) -> None:
        self.readings = readings

    def collect(self) -> Iterator[Metric]:
        yield from _counter_families(totals())
        for reading in self.readings():
            yield _gauge_family(reading.name, reading.help, reading.value)

    def render(self) -> bytes:
        return generate_latest(self)


class WorkersExporter:
    """One of several workers: pushes its counts to the shared directory, and sums every worker's.

    Pushes every ``PUSH_SECONDS`` from a thread (a worker that is never scraped still counts), and
    before rendering. prometheus_client's docs mark a worker dead from the supervisor when it exits
    (gunicorn's ``child_exit``); uvicorn's supervisor has no such hook, and a worker ends by re-raising
    SIGTERM after its graceful shutdown, so no exit code of its own runs either. The scraping worker
    marks exited workers dead instead: their "now" gauges (``livesum``) go, their counters and "since
    start" gauges stay. What a worker counted in its last second before exiting is lost.
    """

    def __init__(self, readings: Readings, path: str) -> None:
        self.readings = readings
        self.path = path
        self._lock = threading.Lock()  # held to push, by the thread and by a scrape
        self._pushed: dict[tuple[str, str], int] = {}
        # Counters without labels are created now, so that each shows 0 before its first count.
        self._counters = {
            name: prometheus_client.Counter(
                name, help_text, [LABEL_NAMES[name]] if name in LABEL_NAMES else [], registry=None
            )
            for name, help_text in COUNTERS.items()
        }
        self._children: dict[tuple[str, str], Any] = {}
        self._gauges: dict[str, prometheus_client.Gauge] = {}
        threading.Thread(target=self._push_forever, name="metrics-push", daemon=True).start()

    def push(self) -> None:
        """Write what was counted since the last push, and the readings of now, to this worker's files.

        Called with ``_lock`` held.
        """
        for key, total in totals().items():
            delta = total - self._pushed.get(key, 0)
            if delta:
                self._child(*key).inc(delta)
                self._pushed[key] = total
        for reading in self.readings():
            gauge = self._gauges.get(reading.name)
            if gauge is None:
                gauge = prometheus_client.Gauge(
                    reading.name,
                    reading.help,
                    multiprocess_mode="sum" if reading.since_start else "livesum",
                    registry=None,
                )
                self._gauges[reading.name] = gauge
            gauge.set(reading.value)

    def _child(self, name: str, label: str) -> Any:
        child = self._children.get((name, label))
        if child is None:
            counter = self._counters[name]
            child = self._children[(name, label)] = counter.labels(label) if name in LABEL_NAMES else counter
        return child

    def _push_forever(self) -> None:
        while True:
            time.sleep(PUSH_SECONDS)
            try:
                with self._lock:
                    self.push()
            except Exception:
                logger.exception("Could not write this worker's metrics to %s", self.path)

    def collect(self) -> Iterator[Metric]:
        for pid in _worker_pids(self.path):
            if not _running(pid):
                with contextlib.suppress(FileNotFoundError):  # another worker's scrape got there first
                    multiprocess.mark_process_dead(pid, self.path)
        files = [file for file in glob.glob(os.path.join(self.path, "*.db")) if _started(file)]
        merged = {family.name: family for family in multiprocess.MultiProcessCollector.merge(files)}
        totals: dict[tuple[str, str], float] = {}
        for name in COUNTERS:
            family = merged.pop(name.removesuffix("_total"), None)
            for sample in family.samples if family else ():
                totals[(name, next(iter(sample.labels.values()), ""))] = sample.value
        yield from _counter_families(totals)
        for name in self._gauges:  # in the order of the readings
            if name in merged:
                yield merged.pop(name)
        yield from merged.values()  # gauges of other workers only (none while all run the same code)

    def render(self) -> bytes:
        # A few small files, in the page cache: read in the event loop, like the single-process counts.
        with self._lock:
            self.push()
            return generate_latest(self)


def _worker_pids(path: str) -> set[int]:
    """The processes with "now" gauges in ``path`` (files named gauge_live<mode>_<pid>.db)."""
    files = glob.glob(os.path.join(path, "gauge_live*_*.db"))
    return {int(file.rsplit("_", 1)[1].removesuffix(".db")) for file in files}


def _started(file: str) -> bool:
    """False for a file a worker has created but not sized yet, which prometheus_client cannot read.

    A worker starting up (or killed at that moment, leaving it so) would otherwise fail every scrape
    (prometheus/client_python issue 1199). Files only grow, so one seen sized stays readable.
    """
    try:
        return os.path.getsize(file) > 0
    except FileNotFoundError:
        return False


def _running(pid: int) -> bool:
    """True if ``pid`` is a process that has not exited (a zombie has: its parent has yet to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
