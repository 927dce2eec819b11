"""The scenarios: each drives one running server with the load generator and returns a flat result.

Every result is a plain dict of numbers (JSON-ready) with the server's and the load generator's CPU
over the measured window, as % of one core, so that a saturated load generator is seen at once.
"""

from __future__ import annotations

import array
import base64
import collections
import math
import time
from typing import Any

from bench.loadgen import LoadGenerator, split
from bench.servers import RunningServer, Serving
from bench.stats import latency_summary

Result = dict[str, Any]
# How long clients may take to connect before a scenario gives up, in seconds.
CONNECT_TIMEOUT = 180.0
# After the publisher is done, how long clients wait for frames still on their way before they count as lost.
FANOUT_GRACE = 5.0


def unpack(text: str) -> array.array[float]:
    """Samples a worker sent with ``bench.client.pack``."""
    samples: array.array[float] = array.array("f")
    samples.frombytes(base64.b64decode(text))
    return samples


def merge_failures(reports: list[dict[str, Any]]) -> dict[str, int]:
    failures: collections.Counter[str] = collections.Counter()
    for report in reports:
        failures.update(report.get("failures", {}))
    return dict(failures)


class Meter:
    """CPU of the server and of the load generator over one measured window, as % of one core."""

    def __init__(self, server: Serving, load: LoadGenerator) -> None:
        self.server, self.load = server, load
        self.started = time.monotonic()
        self.server_cpu = server.cpu_seconds()
        self.load_cpu = load.cpu_seconds()

    def finish(self) -> Result:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        server_cpu = self.server.cpu_seconds() - self.server_cpu
        load_cpu = self.load.cpu_seconds() - self.load_cpu
        return {
            "seconds": elapsed,
            "server_cpu_seconds": server_cpu,
            "loadgen_cpu_seconds": load_cpu,
            "server_cpu_pct": 100 * server_cpu / elapsed,
            "loadgen_cpu_pct": 100 * load_cpu / elapsed,
        }


def echo_latency(
    servers: dict[str, RunningServer], load: LoadGenerator, connections: int, messages: int, rounds: int
) -> dict[str, Result]:
    """Round-trip time of one message at a time, on ``connections`` connections in turn, one worker.

    Sub-millisecond round trips move with whatever else the machine does, so the servers (all
    running) take turns: ``rounds`` rounds of ``messages / rounds`` round trips each, the order
    alternating, and each server's samples are pooled. A busy moment then lands on both sides.
    """
    rtts: dict[str, array.array[float]] = {side: array.array("f") for side in servers}
    connected: dict[str, list[int]] = {side: [] for side in servers}
    failures: dict[str, list[dict[str, Any]]] = {side: [] for side in servers}
    cpu: dict[str, list[Result]] = {side: [] for side in servers}
    per_round = max(1, messages // rounds)
    order = list(servers)
    for round_number in range(rounds):
        for side in order if round_number % 2 == 0 else reversed(order):
            server = servers[side]
            job = {"op": "echo_latency", "url": server.url(), "connections": connections}
            ready = load.prepare([job], CONNECT_TIMEOUT)
            meter = Meter(server, load)
            load.go({"messages": per_round})
            results, _ = load.results(CONNECT_TIMEOUT + per_round)
            cpu[side].append(meter.finish())
            rtts[side].extend(unpack(results[0]["rtts"]))
            connected[side].append(ready[0]["connected"])
            failures[side].extend(ready)
    return {
        side: {
            "connections": min(connected[side]),
            "failures": merge_failures(failures[side]),
            "round_trips": len(rtts[side]),
            "rounds": rounds,
            **latency_summary(rtts[side]),
            "seconds": sum(c["seconds"] for c in cpu[side]),
            "server_cpu_pct": _time_weighted(cpu[side], "server_cpu_pct"),
            "loadgen_cpu_pct": _time_weighted(cpu[side], "loadgen_cpu_pct"),
        }
        for side in servers
    }


def _time_weighted(windows: list[Result], key: str) -> float:
    total = sum(w["seconds"] for w in windows)
    return sum(w[key] * w["seconds"] for w in windows) / total if total else math.nan


def echo_throughput(
    server: RunningServer, load: LoadGenerator, connections: int, seconds: float, window: int
) -> Result:
    """Echoes per second over ``connections`` connections, each with at most ``window`` messages in flight."""
    shares = split(connections, len(load.workers))
    jobs = [{"op": "echo_throughput", "url": server.url(), "connections": n} for n in shares if n]
    ready = load.prepare(jobs, CONNECT_TIMEOUT)
    meter = Meter(server, load)
    load.go({"window": window, "duration": seconds})
    results, _ = load.results(CONNECT_TIMEOUT + seconds)
    replies = sum(r["replies"] for r in results)
    elapsed = max(r["seconds"] for r in results)
    errors: collections.Counter[str] = collections.Counter()
    for r in results:
        errors.update(r["errors"])
    return {
        "connections": sum(r["connected"] for r in ready),
        "failures": merge_failures(ready),
        "window": window,
        "replies": replies,
        "msgs_per_s": replies / elapsed,
        "errors": dict(errors),
        **meter.finish(),
    }


def fanout(
    server: Serving,
    load: LoadGenerator,
    clients: int,
    rate: float,
    seconds: float,
    grace: float = FANOUT_GRACE,
    query: str = "",
    compression: str | None = None,
) -> Result:
    """``clients`` listen while the publisher pushes ``rate`` frames/s for ``seconds``: loss and latency.

    ``query`` is added to the clients' URL (``&max_rate=5``); ``compression="deflate"`` makes them
    offer permessage-deflate.

    A frame counts as lost if it never arrived (a seq gap, or not there ``grace`` seconds after
    the publisher finished). Deliveries/s is frames received over the span from the first publish to
    the last receive (at least the publishing schedule), so a server that falls behind shows a lower
    rate than it was offered.
    """
    count = max(1, round(rate * seconds))
    shares = split(clients, len(load.workers))
    jobs = [
        {
            "op": "fanout",
            "url": server.url() + query,
            "clients": n,
            "topic": server.spec.topic,
            "compression": compression,
        }
        for n in shares
        if n
    ]
    ready = load.prepare(jobs, CONNECT_TIMEOUT)
    meter = Meter(server, load)
    # The hard deadline only matters if the publisher hangs; normally "published" + grace ends the wait.
    load.go({"count": count, "deadline": CONNECT_TIMEOUT + seconds + grace})
    server.publish(rate, count, timeout=CONNECT_TIMEOUT + seconds)
    load.tell({"op": "published", "grace": grace})
    results, _ = load.results(CONNECT_TIMEOUT + seconds + grace)
    usage = meter.finish()
    tally = fanout_tally(ready, results, count, rate)
    received = tally["received"]
    return {
        **tally,
        # The server's whole process tree over the window (the baseline's includes its in-process
        # publisher; the project's push_data is a process of its own, outside the tree).
        "server_cpu_us_per_delivery": 1e6 * usage["server_cpu_seconds"] / received if received else math.nan,
        **usage,
    }


def fanout_tally(ready: list[Result], results: list[Result], count: int, rate: float) -> Result:
    """What the fan-out clients' ready and result reports add up to: loss, rate and latency.

    Any client implementation's (``bench/client.py``, ``bench/node/fanout-client.mjs``) reports have
    these fields.
    """
    connected = sum(r["connected"] for r in ready)
    latencies: array.array[float] = array.array("f")
    for r in results:
        latencies.extend(unpack(r["latencies"]))
    received = sum(r["received"] for r in results)
    expected = connected * count
    first = min((r["first_ts"] for r in results if r["first_ts"] is not None), default=None)
    last = max((r["last_receive"] for r in results if r["last_receive"] is not None), default=None)
    span = (last - first) if first is not None and last is not None else math.nan
    closed: collections.Counter[str] = collections.Counter()
    for r in results:
        closed.update(r["closed"])
    return {
        "clients": connected,
        "failures": merge_failures(ready),
        "rate": rate,
        "published": count,
        "expected": expected,
        "received": received,
        "gaps": sum(r["gaps"] for r in results),
        "lost_pct": 100 * (expected - received) / expected if expected else math.nan,
        # Never more than offered: a short run's span is one publish interval shorter than its schedule.
        "deliveries_per_s": received / max(span, count / rate) if not math.isnan(span) else math.nan,
        "offered_per_s": connected * rate,
        "closed": dict(closed),
        **latency_summary(latencies),
    }


def settled_rss(server: RunningServer, timeout: float = 10.0) -> int:
    """The server's RSS once it stops moving (two samples half a second apart within 1 %)."""
    deadline = time.monotonic() + timeout
    previous = server.rss_bytes()
    while True:
        time.sleep(0.5)
        current = server.rss_bytes()
        if abs(current - previous) <= 0.01 * previous or time.monotonic() > deadline:
            return current
        previous = current


def idle(server: RunningServer, load: LoadGenerator, clients: int) -> Result:
    """Open ``clients`` silent connections and hold them: failures, and server memory per connection."""
    before = settled_rss(server)
    shares = split(clients, len(load.workers))
    meter = Meter(server, load)
    ready = load.prepare(
        [{"op": "idle", "url": server.url(), "clients": n} for n in shares if n], CONNECT_TIMEOUT
    )
    usage = meter.finish()
    after = settled_rss(server)
    load_after = load.rss_bytes()
    load.go({})
    results, _ = load.results(CONNECT_TIMEOUT)
    connected = sum(r["connected"] for r in ready)
    return {
        "clients": clients,
        "connected": connected,
        "still_open": sum(r["still_open"] for r in results),
        "failures": merge_failures(ready),
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "kb_per_connection": (after - before) / 1024 / connected if connected else math.nan,
        # The load generator's side, for scale (websockets' asyncio clients): its whole RSS, interpreters
        # included, since memory freed after an earlier scenario is reused and a difference says little.
        "loadgen_rss_after_mb": load_after / 2**20,
        "loadgen_kb_per_connection": load_after / 1024 / connected if connected else math.nan,
        "connect_seconds": usage["seconds"],
        "server_cpu_pct": usage["server_cpu_pct"],
        "loadgen_cpu_pct": usage["loadgen_cpu_pct"],
    }


def burst(server: RunningServer, load: LoadGenerator, clients: int) -> Result:
    """Start ``clients`` handshakes at the same moment: how many fail, and how (HTTP status or error)."""
    shares = split(clients, len(load.workers))
    load.prepare([{"op": "burst", "url": server.url(), "clients": n} for n in shares if n], CONNECT_TIMEOUT)
    meter = Meter(server, load)
    load.go({})
    results, _ = load.results(CONNECT_TIMEOUT)
    times: array.array[float] = array.array("f")
    for r in results:
        times.extend(unpack(r["handshake"]))
    connected = sum(r["connected"] for r in results)
    return {
        "clients": clients,
        "connected": connected,
        "failed": clients - connected,
        "failures": merge_failures(results),
        **{f"handshake_{k}": v for k, v in latency_summary(times).items()},
        **meter.finish(),
    }
