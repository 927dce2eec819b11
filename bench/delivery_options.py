"""What a client's delivery options cost the server: conflation (``?max_rate=``) and compression.

Both compare the production server with itself, each side freshly started, the same clients and the
same feed: the issue's targets are ratios of server CPU (conflation: at most 0.2x the unconflated
cost) and reports (compression: bytes written per delivered frame and CPU per delivery, on and off).
Bytes are what the server process tree passed to ``write()``/``send()`` (``/proc/PID/io`` wchar),
so they include frame headers and everything else it wrote in the window.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import psutil

from bench import scenarios
from bench.loadgen import LoadGenerator
from bench.servers import ProjectEnvironment, RunningServer, ServerSpec, running

Result = dict[str, Any]

# Per profile: conflation (clients, topic rate, max_rate) and compression (clients, rate), as the issue
# states its targets.
CONFLATION = {"quick": (1000, 100.0, 5.0), "full": (1000, 100.0, 5.0), "smoke": (3, 20.0, 5.0)}
COMPRESSION = {"quick": (1000, 50.0), "full": (1000, 50.0), "smoke": (3, 20.0)}
METHOD = (
    "Conflation: the production server twice, freshly started: {clients:,} clients on a {rate:g}/s topic "
    "taking every frame, then the same clients asking `max_rate={max_rate:g}`; the target is the "
    "conflated run's server CPU at most 0.2x the other's. Compression: the same fan-out with "
    "`WS_COMPRESSION` off, then on with clients offering permessage-deflate; bytes per delivered frame "
    "are what the server process passed to write() (/proc/PID/io) over received frames."
)


def written_bytes(server: RunningServer) -> int:
    """Bytes the server's process tree has passed to write-like system calls so far."""
    total = 0
    for process in server.tree():
        try:
            total += process.io_counters().write_chars
        except psutil.Error:
            continue
    return total


def measured_fanout(server: RunningServer, load: LoadGenerator, **options: Any) -> Result:
    """One fan-out run with the bytes the server wrote per delivered frame added."""
    before = written_bytes(server)
    result = scenarios.fanout(server, load, **options)
    written = written_bytes(server) - before
    result["bytes_per_delivery"] = written / result["received"] if result["received"] else math.nan
    return result


def conflation(
    project: ProjectEnvironment,
    spec: ServerSpec,
    load: LoadGenerator,
    *,
    clients: int,
    rate: float,
    max_rate: float,
    seconds: float,
    grace: float,
) -> Result:
    """``clients`` on a ``rate``/s topic, every frame, then the same at ``max_rate``: server CPU ratio."""
    sides: Result = {}
    for side, query in (("unconflated", ""), ("conflated", f"&max_rate={max_rate:g}")):
        with running(spec, project) as server:
            sides[side] = measured_fanout(
                server, load, clients=clients, rate=rate, seconds=seconds, grace=grace, query=query
            )
    full, paced = sides["unconflated"]["server_cpu_seconds"], sides["conflated"]["server_cpu_seconds"]
    return {
        **sides,
        "clients": clients,
        "rate": rate,
        "max_rate": max_rate,
        "cpu_ratio": paced / full if full else math.nan,
    }


def compression(
    project: ProjectEnvironment,
    spec: ServerSpec,
    load: LoadGenerator,
    *,
    clients: int,
    rate: float,
    seconds: float,
    grace: float,
) -> Result:
    """The same fan-out with ``WS_COMPRESSION`` off, then on with clients offering permessage-deflate."""
    sides: Result = {}
    for side, compressing in (("off", False), ("on", True)):
        env = {**project.env, "WS_COMPRESSION": "1" if compressing else "0"}
        with running(spec, dataclasses.replace(project, env=env)) as server:
            sides[side] = measured_fanout(
                server,
                load,
                clients=clients,
                rate=rate,
                seconds=seconds,
                grace=grace,
                compression="deflate" if compressing else None,
            )
    return {**sides, "clients": clients, "rate": rate}


def table(results: Result) -> list[str]:
    """Markdown rows for the report."""
    lines = [
        "| run | frames delivered | lost % | server CPU s | us CPU/delivery | bytes/frame |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in (
        ("conflation", results.get("conflation")),
        ("compression", results.get("compression")),
    ):
        if not result:
            continue
        for side in ("unconflated", "conflated") if name == "conflation" else ("off", "on"):
            r = result[side]
            lines.append(
                f"| {name}: {side} | {r['received']:,} | {r['lost_pct']:.2f} | {r['server_cpu_seconds']:.2f} "
                f"| {r['server_cpu_us_per_delivery']:.1f} | {r['bytes_per_delivery']:.0f} |"
            )
    if results.get("conflation"):
        lines += [
            "",
            f"Conflated / unconflated server CPU: **{results['conflation']['cpu_ratio']:.2f}x** "
            "(target <= 0.2x).",
        ]
    return lines


def summary_conflation(result: Result) -> str:
    return (
        f"{result['clients']:,} clients, {result['rate']:g}/s topic, max_rate={result['max_rate']:g}: "
        f"server CPU {result['cpu_ratio']:.2f}x of unconflated "
        f"({result['conflated']['server_cpu_seconds']:.2f} s vs "
        f"{result['unconflated']['server_cpu_seconds']:.2f} s)"
    )


def summary_compression(result: Result) -> str:
    parts = [
        f"{side}: {result[side]['bytes_per_delivery']:.0f} B/frame, "
        f"{result[side]['server_cpu_us_per_delivery']:.1f} us CPU/delivery, "
        f"lost {result[side]['lost_pct']:.2f} %"
        for side in ("off", "on")
    ]
    return "; ".join(parts)
